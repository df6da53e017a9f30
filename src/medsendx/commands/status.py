"""``medsendx status``: how the gateway is doing, for the crew."""

from __future__ import annotations

import json
import math

import click
import httpx
from rich.markup import escape
from rich.table import Table

from medsendx.commands._common import console, settings_from_context

ROWS = [
    ("received_total", "received (scanner + drop folders)"),
    ("deidentified_total", "de-identified"),
    ("quarantined_total", "quarantined"),
    ("duplicates_total", "duplicates ignored"),
    ("refused_total", "refused (disk nearly full)"),
    ("errors_total", "pipeline errors (kept, retried)"),
    ("staged", "waiting for de-identification"),
    ("held", "held until study is quiet"),
    ("results_waiting", "studies waiting for their triage results"),
    ("retrying", "kept after a failure, retried"),
    ("queued", "waiting to be sent"),
    ("results_seg_total", "triage SEG queued"),
    ("results_sr_total", "triage SR queued"),
    ("results_kos_total", "triage KOS queued"),
    ("sent_total", "sent"),
    ("failed_total", "refused by destination"),
    ("retries_total", "delivery retries"),
    ("received_bytes_total", "raw bytes received"),
    ("sent_raw_bytes_total", "raw bytes delivered"),
    ("wire_bytes_total", "bytes on the wire"),
    ("seconds_since_last_delivery", "seconds since last delivery"),
]


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--http-port", type=int, help="Health port of the running gateway (default: gateway.http_port).")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool, http_port: int | None) -> None:
    """Show received, de-identified, quarantined, queued, sent and failed objects, bytes
    raw vs on the wire, retries and the time since the last delivery.

    Read from the state directory, so it works whether or not the gateway is running;
    it also says whether the gateway answers on its health port.
    """
    settings = settings_from_context(ctx, {"gateway": {"http_port": http_port}})
    from medsendx.gateway.metrics import as_dict, collect

    figures = as_dict(collect(settings))
    running = _running(settings.gateway.http_port)
    if as_json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in figures.items()}
        retry = [{"reason": r, "objects": n} for r, n in _retry_reasons(settings)]
        console.print_json(json.dumps({"running": running, "station": settings.station_id, **clean,
                                       "retry_reasons": retry}))
        return
    table = Table(title=f"MedSendX gateway - {settings.station_id} - {'running' if running else 'not running'}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, label in ROWS:
        value = figures.get(key, 0)
        if key == "seconds_since_last_delivery":
            text = "never" if isinstance(value, float) and math.isnan(value) else f"{value:.0f}"
        elif key.endswith("bytes_total"):
            text = _human_bytes(value)
        else:
            text = f"{int(value)}"
        table.add_row(label, text)
    console.print(table)
    reasons = _retry_reasons(settings)
    for reason, count in reasons:
        console.print(f"[yellow]{count} object(s) kept and retried:[/] {escape(reason)}")


def _retry_reasons(settings) -> list[tuple[str, int]]:
    from medsendx.gateway.metrics import gateway_db
    from medsendx.gateway.state import GatewayState

    if not gateway_db(settings).exists():
        return []
    state = GatewayState(gateway_db(settings))
    try:
        return state.retrying()
    finally:
        state.close()


def _running(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _human_bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
