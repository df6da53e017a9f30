"""``medsendx config check [FILE]``: is this settings file (plus the environment) usable?"""

from __future__ import annotations

import os

import click



@click.group("config")
def config_cmd() -> None:
    """Inspect and validate MedSendX settings."""


@config_cmd.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Only report problems; do not print the effective settings.")
@click.pass_context
def check_cmd(ctx: click.Context, file: str | None, quiet: bool) -> None:
    """Validate FILE (default: --config, $MEDSENDX_CONFIG or ./medsendx.toml) and the
    MEDSENDX_* environment, name every wrong key and why, and print the effective settings
    with secrets (S3 keys, passwords in URLs) redacted. Exit status 0 when usable, 1 when not.

    \b
    Example:
      medsendx config check /etc/medsendx/medsendx.toml
    """
    from medsendx.config import validate
    from medsendx.configcheck import check_settings, effective_settings, environment_keys, to_toml

    path = file or (ctx.find_root().obj or {}).get("config_path")
    settings, issues = validate(path)
    if settings is None:
        # The loader names every wrong key, where it came from and why.
        for issue in issues:
            click.echo(f"error: {issue}", err=True)
        click.echo(f"{len(issues)} problem(s) found", err=True)
        raise SystemExit(1)
    problems = check_settings(settings)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if not quiet:
        source = path or os.environ.get("MEDSENDX_CONFIG") or ("medsendx.toml" if os.path.isfile("medsendx.toml") else None)
        # plain click.echo, not rich: the output is TOML and must not be wrapped or styled
        click.echo(f"# effective settings (file: {source or 'none'}; secrets redacted)")
        click.echo(to_toml(effective_settings(settings), environment_keys(dict(os.environ))), nl=False)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        raise SystemExit(1)
    click.echo("settings OK", err=True)
