"""Study-aware sending: hold each study until it has been quiet, then queue it by priority;
streaming, queue each image at once and a study's triage results once it has been quiet."""

from __future__ import annotations

import time

import pydicom
import pytest
from pathlib import Path

from medsendx.config import Settings
from medsendx.gateway.demo import scanner_send
from medsendx.gateway.scanday import PATIENTS, plant_identity
from medsendx.gateway.service import GatewayService
from medsendx.gateway.staging import Staging
from medsendx.gateway.state import GatewayState
from medsendx.outbox import Outbox
from test_gateway_service import GatewayProcess, push, wait_for


def test_held_objects_come_out_highest_priority_first(tmp_path):
    state = GatewayState(tmp_path / "gateway.sqlite3")
    state.hold("1.1", "9.9", tmp_path / "a.dcm", 10)
    state.hold("1.2", "9.9", tmp_path / "b.dcm", None)
    state.hold("1.3", "9.9", tmp_path / "c.dcm", 80)
    state.hold("1.4", "8.8", tmp_path / "d.dcm", 50)
    assert [o.sop_instance_uid for o in state.held_objects("9.9")] == ["1.3", "1.1", "1.2"]
    assert state.quiet_studies(60) == []  # just arrived
    assert sorted(state.quiet_studies(60, now=time.time() + 61)) == ["8.8", "9.9"]
    state.close()


def test_study_is_held_until_quiet_then_sent(tmp_path, ct_head):
    settings = Settings(state_dir=tmp_path / "state")
    settings.outbox.destination = str(tmp_path / "hq")
    gw = settings.gateway
    gw.bind_address, gw.dicom_port, gw.http_port, gw.min_free_bytes = "127.0.0.1", 0, 0, 0
    gw.allowed_calling_aets = ["CT_VAN_SCANNER"]  # scanner_send's calling AE title
    gw.study_quiet_seconds, gw.processes, gw.workers = 3.0, 0, 2
    files = [plant_identity(src, tmp_path / f"{i}.dcm", PATIENTS[i // 3], new_uids_seed=PATIENTS[i // 3].patient_id)
             for i, src in enumerate(ct_head[:6])]  # two patients, one study each
    service = GatewayService(settings).start()
    try:
        assert scanner_send(files, service.receiver.port) == [0] * 6
        deadline = time.monotonic() + 60
        while len(service.state.held_objects()) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        # both studies are de-identified and waiting; nothing has been queued for sending yet
        assert len(service.state.held_objects()) == 6
        assert len({o.study_instance_uid for o in service.state.held_objects()}) == 2
        assert sum(Outbox(settings.outbox_db).counts().values()) == 0
        # each released study goes with its triage results: a SEG, a TID 1500 SR and a KOS
        while Outbox(settings.outbox_db).counts()["sent"] < 6 + 2 * 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = Outbox(settings.outbox_db).items()
        assert len(rows) == 6 + 2 * 3 and {r.state for r in rows} == {"sent"}
        assert all(r.priority is not None for r in rows)  # queued with their triage priority
        assert service.state.held_objects() == []
        figures = {m.name: m.value for m in service.metrics()}
        assert (figures["results_seg_total"], figures["results_sr_total"], figures["results_kos_total"]) == (2, 2, 2)
    finally:
        service.stop()
    delivered = [p for p in Path(tmp_path / "hq").rglob("*") if p.is_file()]
    assert len(delivered) == 12
    modalities = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in delivered)
    assert modalities == ["CT"] * 6 + ["KO"] * 2 + ["SEG"] * 2 + ["SR"] * 2


def test_streamed_study_is_due_once_quiet_and_keeps_images_that_came_while_built(tmp_path):
    db = tmp_path / "gateway.sqlite3"
    state = GatewayState(db)
    state.stream("9.9")
    state.stream("9.9")
    state.stream("8.8")
    assert state.quiet_streamed(60) == []  # just arrived
    later = time.time() + 61
    assert dict(state.quiet_streamed(60, now=later)) == {"9.9": 2, "8.8": 1}
    state.stream("9.9")  # a third image came while the results of the first two were built
    assert state.results_built("8.8", 1) is True
    assert state.results_built("9.9", 2) is False  # still due, for a release with the third
    assert state.results_waiting() == 1
    state.close()
    reopened = GatewayState(db)  # what a restart finds
    assert reopened.quiet_streamed(60, now=time.time() + 61) == [("9.9", 3)]
    assert reopened.results_built("9.9", 3) is True and reopened.results_waiting() == 0
    reopened.close()


def _streaming(tmp_path: Path, results_quiet_seconds: float) -> Settings:
    settings = Settings(state_dir=tmp_path / "state")
    settings.outbox.destination = str(tmp_path / "hq")
    gw = settings.gateway
    gw.bind_address, gw.dicom_port, gw.http_port, gw.min_free_bytes = "127.0.0.1", 0, 0, 0
    gw.allowed_calling_aets = ["CT_VAN_SCANNER"]  # scanner_send's calling AE title
    gw.processes, gw.workers, gw.results_quiet_seconds = 0, 2, results_quiet_seconds
    return settings


def test_image_committed_just_before_a_kill_still_gets_its_study_results(tmp_path, ct_head):
    """What a kill between an image's commit and the note of its study leaves: the image
    in the outbox, its raw input still staged, no note. The next start processes the input
    again (a duplicate) and the study gets its SEG, SR and KOS; a scanner re-sending the
    images later makes nothing new."""
    files = [plant_identity(src, tmp_path / f"{i}.dcm", PATIENTS[0]) for i, src in enumerate(ct_head[:2])]
    first = GatewayService(_streaming(tmp_path, 0.0)).start()  # 0: no results, so no note
    try:
        assert scanner_send(files, first.receiver.port) == [0, 0]
        wait_for(lambda: first.state.counters()["deidentified"] == 2 and not first.staging.pending(), what="2 queued")
    finally:
        first.stop()
    settings = _streaming(tmp_path, 1.0)
    staging = Staging(settings.state_dir / "staging")
    for f in files:  # the raw inputs the kill kept
        staging.stage_bytes(f.read_bytes())
    service = GatewayService(settings).start()
    try:
        wait_for(lambda: service.state.counters()["results_kos"] == 1 and service.state.results_waiting() == 0,
                 what="the study's results after the restart")
        counters = service.state.counters()
        assert (counters["results_seg"], counters["results_sr"], counters["duplicates"]) == (1, 1, 2)
        assert scanner_send(files, service.receiver.port) == [0, 0]  # sent again by the scanner
        wait_for(lambda: service.state.counters()["duplicates"] == 4 and not service.staging.pending(),
                 what="the re-sent images handled")
        assert service.state.results_waiting() == 0
    finally:
        service.stop()
    rows = Outbox(settings.outbox_db).items()
    assert len(rows) == 2 + 3 and len({r.sop_instance_uid for r in rows}) == 5


@pytest.mark.slow
def test_streamed_study_gets_its_results_when_quiet_again_after_kills(orthanc, tmp_path, ct_head):
    """Streaming (no study hold), dcmtk storescu -> ``medsendx gateway`` -> Orthanc:
    1. a short quiet time (5 s): the first 14 slices go at once, then the study's SEG, SR and
       KOS; the gateway is killed (SIGKILL);
    2. restarted with a quiet time longer than the test: nothing new is built for the
       delivered study; the other 14 slices go at once, their results wait; SIGKILL;
    3. restarted with the short quiet time: the waiting study gets release 2 (a new SEG,
       an SR numbered 2 naming the first as predecessor and covering all 28 slices).
    Orthanc holds every instance once; the counters say what it holds."""
    from delivery_samples import orthanc_objects
    from test_triage_results import KOS_CLASS, SEG_CLASS, SR_CLASS, STATION

    from medsendx.triage.dicom_results import read_triage_report

    folder = tmp_path / "scanner"
    folder.mkdir()
    series = [plant_identity(src, folder / f"{i:03d}.dcm", PATIENTS[0]) for i, src in enumerate(ct_head)]
    first, second = series[:14], series[14:]
    state, destination = tmp_path / "state", f"dicomweb+{orthanc.dicomweb_url}"
    env = {"MEDSENDX_STATION_ID": STATION}
    quick = {"extra_args": ["--results-quiet-seconds", "5"], "env": env}
    slow = {"env": {**env, "MEDSENDX_GATEWAY__RESULTS_QUIET_SECONDS": "86400"}}

    def results(g: GatewayProcess) -> tuple:
        m = g.metrics()
        return int(m["results_seg_total"]), int(m["results_sr_total"]), int(m["results_kos_total"])

    gateway = GatewayProcess(state, destination, **quick).start()
    try:
        assert push(gateway.dicom_port, first).returncode == 0
        wait_for(lambda: len(orthanc.instance_ids()) == 14 + 3 and gateway.metrics()["queued"] == 0
                 and gateway.metrics()["results_waiting"] == 0, timeout=240, what="the slices, then their results")
        assert results(gateway) == (1, 1, 1)
    finally:
        gateway.kill()
    ct = {uid for uid, ds in orthanc_objects(orthanc).items() if ds.Modality == "CT"}
    order = {r.sop_instance_uid: r.id for r in Outbox(state / "outbox.sqlite3").items()}
    assert len(ct) == 14 and max(order[u] for u in ct) < min(i for u, i in order.items() if u not in ct)  # images first

    gateway = GatewayProcess(state, destination, **slow).start()
    try:
        assert push(gateway.dicom_port, second).returncode == 0
        wait_for(lambda: len(orthanc.instance_ids()) == 28 + 3 and gateway.metrics()["queued"] == 0
                 and gateway.metrics()["results_waiting"] == 1, timeout=240, what="the other slices, results waiting")
        assert results(gateway) == (1, 1, 1)
    finally:
        gateway.kill()

    gateway = GatewayProcess(state, destination, **quick).start()
    try:
        def settled() -> bool:
            m = gateway.metrics()
            return (m["results_sr_total"] == 2 and m["results_waiting"] == 0 and m["queued"] == 0
                    and len(orthanc.instance_ids()) == m["sent_total"])
        wait_for(settled, timeout=240, what="release 2 after the restart")
        seg, sr, kos = results(gateway)
    finally:
        assert gateway.terminate() == 0
    stored = orthanc_objects(orthanc)  # fails on an instance stored twice
    classes = sorted(str(ds.SOPClassUID) for ds in stored.values())
    assert len(stored) == 28 + seg + sr + kos and (seg, sr) == (2, 2)
    # the KOS of release 2 is new only if other key images were chosen (else it is the same object)
    assert kos in (1, 2) and (classes.count(SEG_CLASS), classes.count(SR_CLASS), classes.count(KOS_CLASS)) == (2, 2, kos)
    srs = sorted((d for d in stored.values() if d.SOPClassUID == SR_CLASS), key=lambda d: int(d.InstanceNumber))
    numbers = sorted(int(d.InstanceNumber) for d in stored.values() if d.SOPClassUID == KOS_CLASS)
    assert [int(d.InstanceNumber) for d in srs] == [1, 2] and numbers == list(range(1, kos + 1))
    old, new = (read_triage_report(d) for d in srs)
    assert len(old["images"]) == 14 and old["predecessors"] == []
    assert {i["sop_instance_uid"] for i in new["images"]} == {uid for uid, ds in stored.items() if ds.Modality == "CT"}
    assert new["predecessors"] == [str(srs[0].SOPInstanceUID)]
    rows = Outbox(state / "outbox.sqlite3").items()
    assert len(rows) == len(stored) and {r.state for r in rows} == {"sent"}
