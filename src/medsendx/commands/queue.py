"""``medsendx queue status|list|retry|purge``: see and steer the delivery outbox."""

from __future__ import annotations

import json
import time

import click
from rich.table import Table

from medsendx.commands._common import console, settings_from_context
from medsendx.config import Settings
from medsendx.outbox import STATES, Outbox
from medsendx.transport.base import redact_url


def _open(ctx: click.Context) -> tuple[Settings, Outbox]:
    settings = settings_from_context(ctx)
    return settings, Outbox(settings.outbox_db)


@click.group("queue")
def queue_cmd() -> None:
    """See and steer the delivery outbox (state directory: outbox.sqlite3, outgoing/)."""


@queue_cmd.command("status")
@click.pass_context
def status_cmd(ctx: click.Context) -> None:
    """Objects per state and destination, bytes sent, when the next retry is due."""
    _, outbox = _open(ctx)
    table = Table(title="outbox", title_justify="left")
    table.add_column("destination")
    for state in STATES:
        table.add_column(state, justify="right")
    for destination, counts in sorted(outbox.destinations().items()):
        table.add_row(redact_url(destination), *(str(counts[s]) for s in STATES))
    total = outbox.counts()
    table.add_row("[b]total[/b]", *(f"[b]{total[s]}[/b]" for s in STATES))
    console.print(table)
    stats = outbox.stats()
    if stats["raw_bytes"]:
        console.print(f"sent {stats['raw_bytes']:,} raw bytes using {stats['wire_bytes']:,} bytes on the wire "
                      f"({stats['wire_bytes'] / stats['raw_bytes']:.1%}); {stats['retries']} retried attempts")
    due = outbox.due_by_destination(None)
    if due:
        wait = max(0.0, min(due.values()) - time.time())
        console.print(f"next attempt due in {wait:.0f} s")


@queue_cmd.command("list")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only objects in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many rows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (for scripts).")
@click.pass_context
def list_cmd(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """Objects in delivery order (priority, then age), with attempts and the last error.

    The UIDs shown are the de-identified ones; nothing identifying is stored here."""
    _, outbox = _open(ctx)
    if as_json:
        for item in outbox.items(state=state, limit=limit):
            click.echo(json.dumps({
                "id": item.id, "state": item.state, "priority": item.priority, "attempts": item.attempts,
                "sop_instance_uid": item.sop_instance_uid, "study_instance_uid": item.study_instance_uid,
                "destination": redact_url(item.destination), "size": item.size, "last_error": item.last_error,
                "next_attempt_at": item.next_attempt_at, "sent_at": item.sent_at,
            }))
        return
    table = Table(title_justify="left")
    for name in ("id", "state", "priority", "attempts", "SOP Instance UID", "destination", "last error", "next try"):
        table.add_column(name)
    now = time.time()
    for item in outbox.items(state=state, limit=limit):
        next_try = f"in {item.next_attempt_at - now:.0f} s" if item.state == "queued" and item.next_attempt_at > now else ""
        table.add_row(
            str(item.id), item.state, "" if item.priority is None else str(item.priority), str(item.attempts),
            item.sop_instance_uid, redact_url(item.destination), item.last_error or "", next_try,
        )
    console.print(table)


@queue_cmd.command("retry")
@click.option("--failed/--no-failed", default=True, show_default=True,
              help="Re-queue objects the peer refused (after fixing the cause).")
@click.option("--waiting/--no-waiting", default=True, show_default=True,
              help="Make objects waiting in backoff due now (e.g. the link is back).")
@click.pass_context
def retry_cmd(ctx: click.Context, failed: bool, waiting: bool) -> None:
    """Make failed and/or backed-off objects due now; the gateway or the next
    `medsendx send` delivers them."""
    _, outbox = _open(ctx)
    console.print(f"{outbox.retry(failed=failed, waiting=waiting)} object(s) due now")


@queue_cmd.command("purge")
@click.option("--sent/--no-sent", default=True, show_default=True, help="Forget delivered objects (history).")
@click.option("--failed", is_flag=True, default=False, help="Also drop refused objects and their files.")
@click.pass_context
def purge_cmd(ctx: click.Context, sent: bool, failed: bool) -> None:
    """Remove rows (and any file still spooled) for delivered and, with --failed, refused
    objects. Forgetting a sent object means it would be sent again if queued again."""
    _, outbox = _open(ctx)
    states = tuple(s for s, on in (("sent", sent), ("failed", failed)) if on)
    if not states:
        raise click.UsageError("nothing to purge: give --sent and/or --failed")
    console.print(f"{outbox.purge(states=states)} row(s) purged")
