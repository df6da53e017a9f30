"""The ``medsendx`` command line: one entry point, one module per subcommand.

Subcommands are imported only when used, so ``medsendx segment`` does not pay for the
network stack and ``medsendx --help`` stays fast. To add one, write
``medsendx/commands/<name>.py`` exposing a click command and list it in ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import sys

import click

from medsendx import __version__

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "inspect": "medsendx.commands.inspect:inspect_cmd",
    "mine": "medsendx.commands.mine:mine_cmd",
    "view": "medsendx.commands.inspect:view_cmd",
    "segment": "medsendx.commands.segment:segment_cmd",
    "anonymize": "medsendx.commands.anonymize:anonymize_cmd",
    "gateway": "medsendx.commands.gateway:gateway_cmd",
    "status": "medsendx.commands.status:status_cmd",
    "send": "medsendx.commands.send:send_cmd",
    "queue": "medsendx.commands.queue:queue_cmd",
    "demo": "medsendx.commands.demo:demo_cmd",
    "config": "medsendx.commands.config:config_cmd",
    "hub": "medsendx.commands.hub:hub_cmd",
}

# Subcommands that keep pydicom's value checks: they read no DICOM file (and so need not
# import pydicom), or they report the checks' warnings themselves, counted, never quoted.
# Every other subcommand turns the checks off: their warnings quote values (identity).
VALUE_CHECKS_KEPT = frozenset({"inspect", "view", "status", "queue", "config"})


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medsendx")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="MEDSENDX_CONFIG",
    help="TOML settings file (default: ./medsendx.toml when present).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """MedSendX: the edge DICOM gateway for mobile imaging units.

    De-identifies scans at the source (DICOM PS3.15 Annex E), triages them on the device
    and delivers them to the hospital through a crash-safe outbox. Settings come from a
    TOML file and MEDSENDX_* environment variables; see the README.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    if ctx.invoked_subcommand is not None and ctx.invoked_subcommand not in VALUE_CHECKS_KEPT:
        from medsendx.dicomio import skip_value_validation

        skip_value_validation()


def main() -> None:
    try:
        cli(prog_name="medsendx")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # The last line of defence: a traceback quotes library messages and local values
        # (identity from a file) on the terminal. The commands report damaged files in one
        # line of their own; reaching this is a bug of ours, named by its type only.
        click.echo(f"medsendx: internal error ({type(exc).__name__}); please report it", err=True)
        sys.exit(70)
