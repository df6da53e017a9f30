"""``medsendx hub``: the HQ worklist and fleet dashboard in the browser (issue 15)."""

from __future__ import annotations

import sys

import click

from medsendx.commands._common import console, err_console, settings_from_context


@click.group("hub", invoke_without_command=True)
@click.option("--host", help="Address to listen on (default: [hub] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: [hub] port, 8043).")
@click.option("--source", help="DICOMweb root (dicomweb+http(s)://...) or a folder of DICOM files.")
@click.option("--store", "feature_store", help="Feature store: Parquet folder or s3:// prefix.")
@click.pass_context
def hub_cmd(ctx: click.Context, host: str | None, port: int | None, source: str | None, feature_store: str | None) -> None:
    """Serve the HQ hub: worklist by triage priority, study pages, fleet dashboard, REST API.

    \b
    Sign-in is required; create a user first:
      medsendx hub adduser alice           (asks for the password)
    Then open http://127.0.0.1:8043/ (behind a TLS reverse proxy for anything but loopback).
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_from_context(ctx, {"hub": {"host": host, "port": port, "source": source,
                                                   "feature_store": feature_store}})
    from medsendx.hub.app import hub_paths, serve
    from medsendx.hub.auth import UserStore, file_mode_ok

    location, store, users_file, cache = hub_paths(settings)
    if not UserStore(users_file).names() and not settings.hub.trusted_user_header:
        err_console.print(f"[yellow]no users yet:[/] run `medsendx hub adduser NAME` (users file {users_file})")
    if not file_mode_ok(users_file):
        err_console.print(f"[red]hub:[/] {users_file} is readable by others; chmod 600 it")
        raise SystemExit(2)
    from medsendx.transport.base import redact_url

    kind = "DICOMweb" if location.startswith(("dicomweb+", "http://", "https://")) else "folder"
    console.print(f"hub: studies from {kind} {redact_url(location)}, QC features from {redact_url(store)}")
    console.print(f"hub: http://{settings.hub.host}:{settings.hub.port}/")
    serve(settings)


@hub_cmd.command("adduser")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (for scripts).")
@click.pass_context
def adduser_cmd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Add a hub user (or set a new password): the argon2 hash goes to the users file."""
    settings = settings_from_context(ctx)
    from medsendx.hub.app import hub_paths
    from medsendx.hub.auth import AuthError, UserStore

    users_file = hub_paths(settings)[2]
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        UserStore(users_file).set_password(name, password)
    except AuthError as exc:
        raise click.UsageError(str(exc)) from None
    console.print(f"hub: user {name} saved in {users_file}")


@hub_cmd.command("deluser")
@click.argument("name")
@click.pass_context
def deluser_cmd(ctx: click.Context, name: str) -> None:
    """Remove a hub user (their sessions end at the hub's next restart)."""
    from medsendx.hub.app import hub_paths
    from medsendx.hub.auth import UserStore

    users_file = hub_paths(settings_from_context(ctx))[2]
    if not UserStore(users_file).remove(name):
        raise click.UsageError("no such user")
    console.print(f"hub: user {name} removed")


@hub_cmd.command("rebuild")
@click.option("--source", help="DICOMweb root or folder (default: [hub] source).")
@click.pass_context
def rebuild_cmd(ctx: click.Context, source: str | None) -> None:
    """Forget the hub's cache and read every study from the PACS again (the running hub
    does the same on its own when the cache file is deleted)."""
    settings = settings_from_context(ctx, {"hub": {"source": source}})
    from medsendx.hub.app import hub_paths
    from medsendx.hub.source import SourceError, open_source
    from medsendx.hub.worklist import WorklistCache

    location, _store, _users, cache_path = hub_paths(settings)
    for suffix in ("", "-wal", "-shm"):
        cache_path.with_name(cache_path.name + suffix).unlink(missing_ok=True)
    cache = WorklistCache(cache_path)
    try:
        read = cache.refresh(open_source(location, verify_tls=settings.hub.verify_tls))
    except SourceError as exc:
        err_console.print(f"[red]hub rebuild:[/] {exc}")
        raise SystemExit(2) from None
    console.print(f"hub: {read} studies read into {cache_path}")
