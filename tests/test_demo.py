"""``medsendx demo``: the README's first command, run as a user would."""

from __future__ import annotations

import json

import pydicom
from PIL import Image

from medsendx.gateway.demo import prepare_out
from medsendx.gateway.scanday import PATIENTS


def test_demo_plays_a_scan_day_and_writes_its_outputs(cli, tmp_path):
    out = tmp_path / "demo-out"
    done = cli("demo", "--out", out, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Scan day summary" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objects_scanned"] == 12
    assert summary["objects_delivered"] == 12 and summary["objects_quarantined"] == 0
    assert summary["identities_planted"] > 0 and summary["identities_found_at_hq"] == 0
    assert summary["delivery_retries"] >= 1  # the flaky link really failed some attempts
    assert 0 < summary["wire_bytes"] < summary["raw_bytes"]
    assert len(summary["priorities"]) == 12
    assert any("CT_VAN_EAST" in alert for alert in summary["fleet_alerts"])  # the drifting scanner
    assert not any("CT_VAN_NORTH" in alert or "CT_VAN_WEST" in alert for alert in summary["fleet_alerts"])
    for name in ("highlighted_scan.png", "mining_report.png"):
        with Image.open(out / name) as img:
            assert img.width > 300 and img.height > 200
    # what reached HQ: 12 de-identified objects and, for each of the 3 patients' studies, one
    # SEG, one TID 1500 SR and one KOS; none carrying the planted identities
    delivered = [p for p in (out / "hq").rglob("*") if p.is_file()]
    assert len(delivered) == 12 + 3 * 3 and summary["results_delivered"] == 9
    planted = [v.encode() for p in PATIENTS for v in p.identifying_values()]
    headers = []
    for path in delivered:
        data = path.read_bytes()
        assert not [v for v in planted if v in data]
        headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        assert headers[-1].PatientIdentityRemoved == "YES"
    image_studies = {ds.StudyInstanceUID for ds in headers if ds.Modality == "CT"}
    assert len(image_studies) == 3
    for study in image_studies:
        assert sorted(ds.Modality for ds in headers if ds.StudyInstanceUID == study and ds.Modality != "CT") == [
            "KO", "SEG", "SR"]
    # nothing identifying in the demo's own logs either
    log = (out / "gateway.log").read_bytes()
    assert log and not [v for v in planted if v in log]
    # a second run into the same folder starts afresh: the demo's own state is cleared
    prepare_out(out)
    assert not (out / "state").exists() and not (out / "hq").exists()


def test_demo_refuses_to_clear_a_folder_it_did_not_make(cli, tmp_path):
    out = tmp_path / "precious"
    (out / "hq").mkdir(parents=True)
    (out / "hq" / "keep.txt").write_text("not the demo's")
    done = cli("demo", "--out", out, timeout=120)
    assert done.returncode != 0
    assert (out / "hq" / "keep.txt").exists()


def test_demo_to_a_real_pacs(cli, tmp_path, orthanc):
    out = tmp_path / "to-pacs"
    secret = "pw-Zq81xK"  # a password in the destination URL never reaches an output
    url = orthanc.dicomweb_url.replace("http://", f"dicomweb+http://truck7:{secret}@")
    done = cli("demo", "--out", out, "--to", url, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert secret not in done.stdout + done.stderr
    assert not [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert "truck7" not in (out / "summary.json").read_text()
    assert len(orthanc.instance_ids()) == 12 + 3 * 3  # the images, and SEG + SR + KOS per study
    planted = [v.encode() for p in PATIENTS for v in p.identifying_values()]
    for orthanc_id in orthanc.instance_ids():
        assert not [v for v in planted if v in orthanc.instance_file(orthanc_id)]
    assert (out / "highlighted_scan.png").exists() and (out / "mining_report.png").exists()
    assert not (out / "hq").exists()  # nothing delivered locally when a destination is given
