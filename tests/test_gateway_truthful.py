"""Issue 13, "settings and status that lie": counters never go down, /healthz reflects every
thread the service needs (a real service over HTTP, not a stub), objects staged just before
a kill are counted, and claims lost to kills do not stretch the retry backoff."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from conftest import cli_env, run_cli
from delivery_samples import enqueue_all, real_samples
from medsendx.config import Settings, load_settings
from medsendx.delivery import Deliverer
from medsendx.gateway.metrics import as_dict, collect
from medsendx.gateway.service import GatewayService
from medsendx.gateway.staging import Staging
from medsendx.outbox import Outbox
from servers import free_port

COUNTERS = ("sent_total", "failed_total", "wire_bytes_total", "retries_total", "sent_raw_bytes_total")


def _wait(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_counters_never_decrease_after_queue_purge(tmp_path: Path, ct_head) -> None:
    settings = load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={})
    outbox = Outbox(settings.outbox_db)
    enqueue_all(outbox, real_samples(ct_head[:3], tmp_path / "in"), "file:///hq")
    ok, flaky, refused = outbox.claim(limit=10)
    outbox.mark_sent(ok.id, wire_bytes=1000)
    outbox.mark_retry(flaky.id, "connection reset", delay=0, wire_bytes=300)
    outbox.mark_failed(refused.id, "peer refused the object (0xC000)", wire_bytes=50)
    (again,) = outbox.claim(limit=10, now=time.time() + 1)
    outbox.mark_sent(again.id, wire_bytes=900)
    before = as_dict(collect(settings))
    assert (before["sent_total"], before["failed_total"], before["retries_total"], before["wire_bytes_total"]) \
        == (2, 1, 1, 2250)
    assert before["sent_raw_bytes_total"] == ok.size + again.size
    env = {"MEDSENDX_STATE_DIR": str(settings.state_dir)}
    assert run_cli("queue", "purge", env=env).returncode == 0
    assert run_cli("queue", "purge", "--failed", env=env).returncode == 0
    assert outbox.counts() == {"queued": 0, "sending": 0, "sent": 0, "failed": 0}
    after = as_dict(collect(settings))
    assert {k: after[k] for k in COUNTERS} == {k: before[k] for k in COUNTERS}
    # and they go on counting from there
    enqueue_all(outbox, real_samples(ct_head[3:4], tmp_path / "in2"), "file:///hq")
    (item,) = outbox.claim(limit=10)
    outbox.mark_sent(item.id, wire_bytes=10)
    assert as_dict(collect(settings))["sent_total"] == 3


def _service_settings(tmp_path: Path) -> Settings:
    settings = Settings(state_dir=tmp_path / "state")
    settings.outbox.destination = str(tmp_path / "hq")
    gw = settings.gateway
    gw.dicom_port, gw.http_port, gw.min_free_bytes, gw.processes, gw.workers = 0, 0, 0, 0, 1
    gw.allowed_calling_aets = ["CT_VAN_1"]
    return settings


def test_healthz_reports_a_dead_delivery_thread(tmp_path: Path) -> None:
    service = GatewayService(_service_settings(tmp_path)).start()
    try:
        url = f"http://127.0.0.1:{service.metrics_server.port}/healthz"
        first = httpx.get(url, timeout=5)
        assert first.status_code == 200 and first.json()["status"] == "ok" and first.json()["dead"] == []

        def broken(**kwargs):  # a fault inside the delivery loop (e.g. its database gone)
            raise RuntimeError("injected fault")

        service.deliverer.run_once = broken
        service.deliverer.wake()
        assert _wait(lambda: httpx.get(url, timeout=5).status_code == 503)
        body = httpx.get(url, timeout=5).json()
        assert body["status"] == "failing" and body["dead"] == ["deliverer"]
    finally:
        service.stop()


def test_object_staged_just_before_a_kill_is_counted_once(tmp_path: Path, ct_head) -> None:
    settings = _service_settings(tmp_path)
    # What a kill between the staging fsync and the counter update leaves: a staged
    # object nobody counted. Then one that was counted before the kill.
    staging = Staging(settings.state_dir / "staging")
    staging.stage_bytes(ct_head[0].read_bytes())
    service = GatewayService(settings)
    counted = staging.stage_bytes(ct_head[1].read_bytes())
    service.state.count_received(counted.name, counted.stat().st_size)
    service.start()
    try:
        assert _wait(lambda: not service.staging.pending() and service.state.counters()["deidentified"] == 2)
        counters = service.state.counters()
        assert counters["received"] == 2
        assert counters["received_bytes"] == ct_head[0].stat().st_size + ct_head[1].stat().st_size
    finally:
        service.stop()


CLAIM_AND_DIE = textwrap.dedent(
    """
    import os, sys
    from medsendx.outbox import Outbox
    Outbox(sys.argv[1]).claim(limit=10)
    os._exit(0)  # like SIGKILL: the row stays in 'sending'
    """
)


class Ceiling(random.Random):
    """Full jitter at its maximum: the delay is the backoff ceiling itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_kills_do_not_stretch_the_backoff(tmp_path: Path, ct_head) -> None:
    settings = load_settings(overrides={"state_dir": str(tmp_path / "state"),
                                        "outbox": {"backoff_base_seconds": 1.0, "backoff_cap_seconds": 300.0}},
                             environ={})
    outbox = Outbox(settings.outbox_db)
    destination = f"dimse://PACS@127.0.0.1:{free_port()}"  # nothing listens: a real transient fault
    enqueue_all(outbox, real_samples(ct_head[:1], tmp_path / "in"), destination)
    for _ in range(6):  # six gateways killed while holding the row
        subprocess.run([sys.executable, "-c", CLAIM_AND_DIE, str(outbox.db_path)], env=cli_env(), check=True)
    deliverer = Deliverer(outbox, settings, rng=Ceiling())
    outbox.due_by_destination(None)  # the dead claimers' row is queued again
    before = time.time()
    deliverer.run_once()
    (row,) = outbox.items()
    assert row.state == "queued" and row.transient_faults == 1
    assert row.attempts == 1  # one transfer was really tried
    assert row.next_attempt_at - before <= 1.0 + 5.0  # first fault: ceiling = base (plus the test's own time)
