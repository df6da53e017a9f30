"""Helpers shared by the subcommands: settings from the CLI context, console output."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from medsendx.config import ConfigError, Settings, load_settings

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def settings_from_context(ctx: click.Context, overrides: dict[str, Any] | None = None) -> Settings:
    """Load settings for a subcommand; a bad setting becomes a clean usage error."""
    root = ctx.find_root()
    config_path = (root.obj or {}).get("config_path")
    try:
        return load_settings(config_path, overrides=_drop_none(overrides or {}))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Options the user did not give (None) must not override the file or environment."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
