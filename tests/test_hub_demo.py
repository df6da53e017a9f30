"""``medsendx demo --hub``: the scan day ends with the hub serving it (HQ folder source),
its URL and a one-time login printed; and the hub's trust of a reverse proxy's header."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import cli_env
from servers import free_port


def _sign_in(url: str, user: str, password: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=url, timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    response = client.post("/login", data={"username": user, "password": password, "csrf": token})
    return client, response.headers.get("location", "")


def test_demo_hub_serves_the_scan_day_with_a_one_time_login(tmp_path: Path) -> None:
    port = free_port()
    log = open(tmp_path / "demo.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "medsendx", "demo", "--out", str(tmp_path / "day"), "--hub",
                             "--hub-port", str(port)], env=cli_env({"COLUMNS": "200"}), stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        match = None
        while match is None:
            text = (tmp_path / "demo.log").read_text()
            match = re.search(r"hub: (http://127\.0\.0\.1:\d+/)\s+\(sign in once as (\S+) / (\S+);", text)
            assert proc.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.5)
        url, user, password = match.groups()
        assert url == f"http://127.0.0.1:{port}/"
        while True:
            try:
                httpx.get(url + "login", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert httpx.get(url + "api/worklist").status_code == 401
        client, where = _sign_in(url, user, password)
        assert where == "/worklist"
        worklist = client.get("/api/worklist").json()
        # the demo's 12 slices of 3 synthetic patients: three studies from this truck
        assert worklist["total"] == 3
        assert {s["station"] for s in worklist["studies"]} == {"REMOTE_MOBILE_CLINIC_01"}
        assert sum(s["objects"] for s in worklist["studies"]) >= 12
        # each study came with its triage report (the demo holds studies for their results)
        assert all(s["priority"] is not None and s["reasons"] for s in worklist["studies"])
        summary = __import__("json").loads((tmp_path / "day" / "summary.json").read_text())
        assert sorted(s["priority"] for s in worklist["studies"]) == sorted(
            _study_priorities(tmp_path / "day" / "hq"))
        overlay = client.get(f"/study/{worklist['studies'][0]['study_uid']}/overlay.png")
        assert overlay.status_code == 200 and overlay.content[:4] == b"\x89PNG"
        assert summary["objects_delivered"] == 12 and summary["results_delivered"] == 9  # images; SEG + SR + KOS per study
        stations = client.get("/api/stations").json()
        assert "CT_VAN_EAST" in {a["station"] for a in client.get("/api/alerts").json()}  # the drifting van
        assert any(s["station"] == "REMOTE_MOBILE_CLINIC_01" for s in stations["stations"])
        # nothing identifying in what the hub answers: the planted names are not there
        from medsendx.gateway.scanday import PATIENTS

        body = client.get("/api/worklist").text + client.get(f"/api/studies/{worklist['studies'][0]['study_uid']}").text
        for patient in PATIENTS:
            for value in patient.identifying_values():
                assert value not in body
        # the login worked once
        _again, where = _sign_in(url, user, password)
        assert where == "/login?failed=1"
        assert client.get("/api/worklist").status_code == 200  # the first session lasts
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _study_priorities(hq: Path) -> list[int]:
    """Per study, the highest priority the truck gave its images -- read from the reports in
    the HQ folder with the gateway's own reader, not through the hub."""
    import pydicom

    from medsendx.triage.dicom_results import read_triage_report

    out = []
    for path in hq.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "SR":
            out.append(read_triage_report(ds)["priority"])
    return out


def test_trusted_proxy_header_only_from_the_proxy(tmp_path: Path) -> None:
    """With [hub] trusted_user_header set, the header signs in only requests from the
    configured proxy addresses; from anywhere else it is ignored."""
    from fastapi.testclient import TestClient

    from medsendx.config import load_settings
    from medsendx.hub.app import Hub, create_app

    (tmp_path / "hq").mkdir()
    settings = load_settings(None, environ={})
    settings.state_dir = tmp_path / "state"
    settings.hub.source = str(tmp_path / "hq")
    settings.hub.trusted_user_header = "X-Remote-User"
    settings.hub.trusted_proxies = ["10.1.2.3/32"]
    app = create_app(settings, Hub(settings), poll=False)
    from_proxy = TestClient(app, client=("10.1.2.3", 40000))
    assert from_proxy.get("/api/worklist", headers={"X-Remote-User": "alice"}).status_code == 200
    assert from_proxy.get("/api/worklist").status_code == 401
    assert from_proxy.get("/api/worklist", headers={"X-Remote-User": "bad name!"}).status_code == 401
    elsewhere = TestClient(app, client=("10.1.2.4", 40000))
    assert elsewhere.get("/api/worklist", headers={"X-Remote-User": "alice"}).status_code == 401


def test_password_guessing_is_slowed_down(tmp_path: Path) -> None:
    """After ten wrong passwords for a name from one address, even the right one is
    refused for a while (and another address is not affected)."""
    from fastapi.testclient import TestClient

    from medsendx.config import load_settings
    from medsendx.hub.app import Hub, create_app

    (tmp_path / "hq").mkdir()
    settings = load_settings(None, environ={})
    settings.state_dir = tmp_path / "state"
    settings.hub.source = str(tmp_path / "hq")
    hub = Hub(settings)
    hub.users.set_password("alice", "the right one")
    app = create_app(settings, hub, poll=False)

    def attempt(client: TestClient, password: str) -> int:
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        return client.post("/login", data={"username": "alice", "password": password, "csrf": token},
                           follow_redirects=False).status_code

    guesser = TestClient(app, client=("10.0.0.9", 1234))
    for _ in range(10):
        assert attempt(guesser, "a wrong guess") == 303
    assert attempt(guesser, "the right one") == 429
    assert attempt(TestClient(app, client=("10.0.0.10", 1234)), "the right one") == 303
