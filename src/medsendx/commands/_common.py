"""Helpers shared by the subcommands: settings from the CLI context, console output."""

from __future__ import annotations

import os
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from medsendx.config import ConfigError, Settings, load_settings

# (emoji off: ":x:" in a file name must not become a picture)
console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)


def literal(text: object) -> str:
    """``text`` (a file name, a value read from a file) ready to go inside a Rich markup
    string: printed exactly as it is, never interpreted (``[red]``, ``[/i]``), and with
    control and other unprintable characters escaped (``\\x1b``), so no escape sequence
    reaches the terminal. Undecodable bytes of a file name show as ``\\xNN``."""
    value = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    if not value.isprintable():
        value = "".join(ch if ch.isprintable() else _escaped(ch) for ch in value)
    return escape(value)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that was not UTF-8 (surrogateescape)
        code -= 0xDC00
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


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
