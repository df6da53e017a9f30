"""Issue 13, "nothing lost": when the quarantine itself cannot take an object (here its
folder is a regular file, which stops root too), the object is not reported handled: its
staged copy and its drop-folder original (under --originals delete) stay, `status` says
so, and once quarantine works again the object is quarantined and only then removed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydicom.data import get_testdata_file

from conftest import run_cli
from medsendx.config import Settings
from medsendx.fsutil import sha256_file
from medsendx.gateway.demo import SCANNER_AET, scanner_send
from medsendx.gateway.service import GatewayService


def _wait(condition, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_object_stays_staged_until_quarantine_can_take_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = Settings(state_dir=state)
    settings.outbox.destination = str(tmp_path / "hq")
    settings.pixels.policy = "quarantine"  # an ultrasound must go to quarantine
    gw = settings.gateway
    gw.dicom_port, gw.http_port, gw.min_free_bytes, gw.processes, gw.workers = 0, 0, 0, 0, 1
    gw.allowed_calling_aets = [SCANNER_AET]
    gw.watch_dirs, gw.originals, gw.settle_seconds = [str(drop)], "delete", 0.2
    state.mkdir(parents=True)
    settings.quarantine_dir.write_text("not a folder\n")  # quarantine unusable, even for root

    ultrasound = Path(get_testdata_file("US1_UNCR.dcm"))
    junk = drop / "scan.dcm"
    junk.write_bytes(b"\x00" * 200 + b"not DICOM at all")  # unreadable: must be quarantined
    junk_digest = sha256_file(junk)

    service = GatewayService(settings).start()
    try:
        assert scanner_send([ultrasound], service.receiver.port) == [0]
        assert _wait(lambda: sum(n for _, n in service.state.retrying()) == 2), service.state.retrying()
        assert len(service.staging.pending()) == 1  # the scanner's only copy went nowhere
        assert junk.exists()  # the drop-folder original is not deleted
        assert service.state.counters()["quarantined"] == 0
        status = run_cli("status", "--json", env={"MEDSENDX_STATE_DIR": str(state)})
        figures = json.loads(status.stdout)
        assert figures["retrying"] == 2
        assert figures["retry_reasons"] and "quarantine" in figures["retry_reasons"][0]["reason"]

        settings.quarantine_dir.unlink()  # quarantine works again: the retries go through
        assert _wait(lambda: not service.staging.pending() and not junk.exists()
                     and not service.state.retrying()), service.state.retrying()
        assert service.state.counters()["quarantined"] == 2
    finally:
        service.stop()
    stored = {p.name for p in settings.quarantine_dir.glob("*.dcm")}
    assert f"{junk_digest}.dcm" in stored
    assert f"{sha256_file(ultrasound)}.dcm" in stored or len(stored) == 2  # received bytes may be re-encoded
    assert not list((tmp_path / "hq").glob("*.dcm")) if (tmp_path / "hq").exists() else True
