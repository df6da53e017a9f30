"""How the gateway is doing: one set of figures for ``/metrics``, ``/healthz`` and ``status``.

The figures are read from durable state (the gateway's counters, the staging folder, the
outbox), so they survive restarts and ``medsendx status`` shows the same numbers whether
or not the service is running. Only counts, sizes and times: nothing from any object.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from medsendx.config import Settings
from medsendx.gateway.state import GatewayState

PREFIX = "medsendx_"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "counter" | "gauge"
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


def staging_dir(settings: Settings):
    return settings.state_dir / "staging"


def gateway_db(settings: Settings):
    return settings.state_dir / "gateway.sqlite3"


def outbox_figures(settings: Settings) -> dict[str, Any]:
    """Delivery figures from the outbox: objects per state, raw and wire bytes, retries,
    time of the last delivery. Empty when no outbox exists yet (nothing was ever queued)."""
    if not settings.outbox_db.exists():
        return {}
    from medsendx.outbox import Outbox

    outbox = Outbox(settings.outbox_db)
    return {"states": outbox.counts(), **outbox.stats(), "totals": outbox.totals()}


def collect(settings: Settings, state: GatewayState | None = None) -> list[Metric]:
    """Every figure the gateway exports, from durable state."""
    own_state = state is None
    state = state or GatewayState(gateway_db(settings))
    try:
        counters = state.counters()
        held = len(state.held_objects())
        results_waiting = state.results_waiting()
        retrying = sum(n for _, n in state.retrying())
    finally:
        if own_state:
            state.close()
    staged = len(list(staging_dir(settings).glob("*.dcm"))) if staging_dir(settings).is_dir() else 0
    delivery = outbox_figures(settings)
    states: dict[str, int] = delivery.get("states", {})
    totals: dict[str, int] = delivery.get("totals", {})

    metrics = [
        Metric("received_total", "counter", "Objects received from scanners and drop folders", counters["received"]),
        Metric("received_bytes_total", "counter", "Raw bytes of the objects received", counters["received_bytes"]),
        Metric("deidentified_total", "counter", "Objects de-identified and committed", counters["deidentified"]),
        Metric("quarantined_total", "counter", "Objects quarantined instead of sent", counters["quarantined"]),
        Metric("duplicates_total", "counter", "Objects received again after being queued or sent", counters["duplicates"]),
        Metric("refused_total", "counter", "C-STORE requests answered with a failure status", counters["refused"]),
        Metric("errors_total", "counter", "Pipeline errors (the staged object is kept and retried)", counters["errors"]),
        Metric("staged", "gauge", "Raw objects staged and not yet de-identified", staged),
        Metric("held", "gauge", "De-identified objects held until their study is quiet", held),
        Metric("results_waiting", "gauge", "Streamed studies whose triage results wait until the study is quiet",
               results_waiting),
        Metric("retrying", "gauge", "Objects kept after a failure (e.g. quarantine unusable), retried", retrying),
        Metric("queued", "gauge", "Objects in the outbox waiting to be sent", _waiting(states)),
        # Counters from the outbox's durable totals (never from its rows: `queue purge`
        # forgets rows, and a Prometheus counter must never go down).
        Metric("sent_total", "counter", "Objects delivered to the destination", totals.get("sent", 0)),
        Metric("failed_total", "counter", "Refusals for good by the destination", totals.get("failed", 0)),
        Metric("wire_bytes_total", "counter", "Bytes sent on the wire (after compression)", totals.get("wire_bytes", 0)),
        Metric("sent_raw_bytes_total", "counter", "Size of the delivered objects before compression", totals.get("sent_raw_bytes", 0)),
        Metric("retries_total", "counter", "Delivery attempts that failed and were retried", totals.get("retries", 0)),
        Metric("retried_objects", "gauge", "Objects in the outbox that needed more than one attempt", delivery.get("retried_objects", 0)),
    ]
    for kind, what in (("seg", "Segmentations"), ("sr", "TID 1500 reports"), ("kos", "Key Object Selections")):
        metrics.append(Metric(f"results_{kind}_total", "counter", f"Triage results queued with their studies: {what}",
                              counters[f"results_{kind}"]))
    last = delivery.get("last_sent_at")
    since = (time.time() - float(last)) if last else float("nan")
    metrics.append(Metric("seconds_since_last_delivery", "gauge", "Seconds since the last successful delivery (NaN: none yet)", since))
    for state_name, count in sorted(states.items()):
        metrics.append(Metric("outbox_objects", "gauge", "Outbox objects per state", count, {"state": state_name}))
    return metrics


def _waiting(states: dict[str, int]) -> int:
    return sum(v for k, v in states.items() if k not in ("sent", "failed") and not k.startswith("failed"))


def as_dict(metrics: list[Metric]) -> dict[str, float]:
    """Unlabelled figures by short name (for ``status --json`` and the demo summary)."""
    return {m.name: m.value for m in metrics if not m.labels}


def prometheus_text(metrics: list[Metric]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    described: set[str] = set()
    for m in metrics:
        name = PREFIX + m.name
        if name not in described:
            lines.append(f"# HELP {name} {m.help}")
            lines.append(f"# TYPE {name} {m.kind}")
            described.add(name)
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(m.labels.items()))
        value = "NaN" if m.value != m.value else repr(float(m.value)) if isinstance(m.value, float) else str(m.value)
        lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
    return "\n".join(lines) + "\n"


def parse_prometheus_text(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text page, by full metric name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


class MetricsServer:
    """``/healthz`` (JSON) and ``/metrics`` (Prometheus text) on a loopback HTTP port."""

    def __init__(self, port: int, metrics: Callable[[], list[Metric]], health: Callable[[], dict[str, Any]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                try:
                    if self.path.split("?")[0] == "/metrics":
                        body = prometheus_text(outer.metrics()).encode()
                        self._reply(200, "text/plain; version=0.0.4; charset=utf-8", body)
                    elif self.path.split("?")[0] == "/healthz":
                        health = outer.health()
                        code = 200 if health.get("status") == "ok" else 503
                        self._reply(code, "application/json", json.dumps(health).encode())
                    else:
                        self._reply(404, "text/plain", b"not found: try /metrics or /healthz\n")
                except Exception as exc:  # a broken figure must not kill the server
                    self._reply(500, "text/plain", f"metrics unavailable ({type(exc).__name__})\n".encode())

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # keep access logs out of stderr
                pass

        self.metrics = metrics
        self.health = health
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
