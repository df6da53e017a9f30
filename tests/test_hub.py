"""The HQ hub (issue 15) against a real Orthanc holding studies sent by ``medsendx send``
with their triage results, and a feature store written by the gateway plus a simulated fleet in
which one scanner drifts. The hub runs as ``medsendx hub`` in a subprocess; the pages are
driven in Debian's chromium through Playwright (nothing is installed by the test).

Oracles: the truck's own triage records (``<state_dir>/triage/*.json``) for priorities,
reasons and density; the station names we gave each ``send``; the drifting station we
planted; the reports are the gateway's own (SEG, TID 1500 SR, KOS built with highdicom
by ``send``, issue 14), read back by the hub over DICOMweb.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import cli_env, run_cli
from servers import free_port
from triage_synthetic import ct_with_hu, mammography_phantom, metal_streaks, save

from medsendx.gateway.scanday import PATIENTS, plant_identity

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "correct horse battery"
STATIONS = {"north": "TRUCK_NORTH", "south": "TRUCK_SOUTH"}
DRIFTING = "CT_VAN_EAST"


def _scans(ct_head: list[Path], root: Path) -> dict[str, Path]:
    """north: 3 routine CT slices (one study); south: a CT study with one metal slice and
    a mammogram with 60 % dense tissue (two studies)."""
    north, south = root / "north", root / "south"
    north.mkdir(parents=True)
    south.mkdir(parents=True)
    for i, src in enumerate(ct_head[3:6]):
        plant_identity(src, north / f"ct{i}.dcm", PATIENTS[0], new_uids_seed="north")
    planted = [plant_identity(src, south / f"ct{i}.dcm", PATIENTS[1], new_uids_seed="south")
               for i, src in enumerate(ct_head[6:8])]
    # the metal slice: another position of the same series (a SEG holds one frame per plane)
    source = plant_identity(ct_head[8], root / "metal-source.dcm", PATIENTS[1], new_uids_seed="south")
    save(ct_with_hu(source, metal_streaks), south / "ct_metal.dcm")
    assert planted
    mg, _truth = mammography_phantom(0.6)
    mg.SOPClassUID = mg.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography
    mg.PatientName, mg.PatientID, mg.StudyDate, mg.StudyTime = PATIENTS[2].name, PATIENTS[2].patient_id, "20260105", "101500"
    mg.BurnedInAnnotation = "NO"
    mg.InstanceNumber = 1
    save(mg, south / "mg.dcm")
    return {"north": north, "south": south}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _truck_records(state: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (state / "triage").glob("*.json")}


@pytest.fixture(scope="module")
def hq(orthanc_server, ct_head, tmp_path_factory):
    """Orthanc with three studies sent by `medsendx send` (images and the truck's SEG, SR
    and KOS), a feature store, a running hub."""
    from medsendx.config import load_settings
    from medsendx.fleet.report import features_from_files
    from medsendx.fleet.simulate import Fault, simulate_ct_fleet
    from medsendx.fleet.store import FeatureStore

    orthanc_server.reset()
    root = tmp_path_factory.mktemp("hub")
    scans = _scans(ct_head, root / "scanner")
    store = root / "store"
    expected: dict[str, dict] = {}  # study UID -> what the truck computed
    for key, folder in scans.items():
        state = root / f"truck-{key}"
        env = {"MEDSENDX_STATE_DIR": str(state), "MEDSENDX_STATION_ID": STATIONS[key]}
        done = run_cli("send", folder, "--to", "dicomweb+" + orthanc_server.dicomweb_url, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        records = _truck_records(state)
        by_study: dict[str, list] = {}
        for orthanc_id in orthanc_server.instance_ids():
            ds = pydicom.dcmread(__import__("io").BytesIO(orthanc_server.instance_file(orthanc_id)))
            if ds.SOPInstanceUID in records:
                by_study.setdefault(ds.StudyInstanceUID, []).append((ds, records[ds.SOPInstanceUID]))
        for study_uid, images in by_study.items():
            if study_uid in expected:
                continue
            recs = [r for _, r in images]
            expected[study_uid] = {
                "station": STATIONS[key],
                "modality": images[0][0].Modality,
                "priority": max(r["priority"] for r in recs),
                # the reasons of a highest-priority image (the report's reader takes one)
                "reasons": [r["reasons"] for r in recs if r["priority"] == max(q["priority"] for q in recs)],
                "density": _mean([r["breast_density_percent"] for r in recs if r.get("breast_density_percent") is not None]),
                "repeat": any(r["flags"] for r in recs),
            }
        for parquet in (state / "features").rglob("*.parquet"):  # the gateway's QC feature rows
            target = store / "trucks" / key / parquet.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(parquet, target)
    assert len(expected) == 3
    simulated = simulate_ct_fleet(ct_head, root / "fleet", {"CT_VAN_NORTH": None, DRIFTING: Fault("drift", 4.0, start=0.5),
                                                            "CT_VAN_WEST": None, "CT_VAN_SOUTH": None},
                                  scans_per_station=24, seed=7)
    rows, _ = features_from_files([f for s in simulated for f in s.files], progress=False)
    FeatureStore(str(store / "fleet"), load_settings(None, environ={})).append(rows)

    hub_state = root / "hub-state"
    env = {
        "MEDSENDX_STATE_DIR": str(hub_state),
        "MEDSENDX_HUB__SOURCE": "dicomweb+" + orthanc_server.dicomweb_url,
        "MEDSENDX_HUB__FEATURE_STORE": str(store),
        "MEDSENDX_HUB__POLL_SECONDS": "1",
        "MEDSENDX_HUB__VIEWER_URL": orthanc_server.url + "/ui/app/#/filtered-studies?StudyInstanceUID={study_uid}",
    }
    added = run_cli("hub", "adduser", "alice", "--password-stdin", env=env, input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert oct((hub_state / "hub-users.txt").stat().st_mode & 0o777) == "0o600"
    assert PASSWORD not in (hub_state / "hub-users.txt").read_text()
    port = free_port()
    log = open(root / "hub.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "medsendx", "hub", "--port", str(port)], env=cli_env(env),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:  # up once the sign-in page answers
            try:
                if client.get("/login").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "hub.log").read_text()
            time.sleep(0.2)
        session = sign_in(url)
        while True:  # the poller has read every study and mined the store
            wl = session.get("/api/worklist").json()
            stations = session.get("/api/stations").json()
            if wl["total"] == 3 and all(s["priority"] is not None for s in wl["studies"]) and stations["analysed"] and stations["scans"]:
                break
            assert time.monotonic() < deadline, (wl, stations)
            time.sleep(0.5)
        yield {"url": url, "expected": expected, "session": session, "root": root, "log": root / "hub.log", "env": env}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def sign_in(url: str, user: str = "alice", password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    form = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"username": user, "password": password, "csrf": token})
    assert response.status_code == 303 and response.headers["location"] == "/worklist"
    return client


PAGES = ["/", "/worklist", "/worklist/rows", "/fleet", "/fleet/live", "/study/1.2.3", "/study/1.2.3/overlay.png",
         "/static/htmx.min.js", "/api/docs"]
APIS = ["/api/worklist", "/api/studies/1.2.3", "/api/stations", "/api/alerts", "/api/openapi.json", "/api/docs"]


def test_nothing_without_signing_in(hq) -> None:
    anonymous = httpx.Client(base_url=hq["url"], timeout=30)
    for path in PAGES:
        response = anonymous.get(path)
        assert response.status_code in (303, 401), path
        if response.status_code == 303:
            assert response.headers["location"] == "/login", path
    for path in APIS:
        assert anonymous.get(path).status_code == 401, path
    # a cookie that was never issued is nobody
    forged = httpx.Client(base_url=hq["url"], timeout=30, cookies={"msx_session": "x" * 43})
    assert forged.get("/api/worklist").status_code == 401
    # and signed in, the same paths answer
    assert hq["session"].get("/api/alerts").status_code == 200


def test_wrong_password_and_forged_forms_are_refused(hq) -> None:
    url = hq["url"]
    client = httpx.Client(base_url=url, timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    wrong = client.post("/login", data={"username": "alice", "password": "not the password", "csrf": token})
    assert wrong.status_code == 303 and wrong.headers["location"] == "/login?failed=1"
    assert "msx_session" not in client.cookies
    assert client.get("/api/worklist").status_code == 401
    nobody = client.post("/login", data={"username": "mallory", "password": PASSWORD, "csrf": token})
    assert nobody.headers["location"] == "/login?failed=1"
    # a form posted from elsewhere: the right password but no CSRF token / another one
    other = httpx.Client(base_url=url, timeout=30)
    assert other.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 403
    assert other.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": token}).status_code == 403
    assert "msx_session" not in other.cookies
    # sign-out needs the session's token too; without it the session survives
    session = sign_in(url)
    assert session.post("/logout", data={}).status_code == 403
    assert session.get("/api/worklist").status_code == 200
    page = session.get("/worklist").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert session.post("/logout", data={"csrf": csrf}).status_code == 303
    assert session.get("/api/worklist").status_code == 401
    cookie = sign_in(url).get("/api/worklist")  # cookies carry the right flags
    login = httpx.Client(base_url=url).get("/login")
    assert "httponly" in login.headers["set-cookie"].lower() and "samesite=strict" in login.headers["set-cookie"].lower()
    assert cookie.status_code == 200
    # the request bodies (passwords) are never logged
    assert PASSWORD not in hq["log"].read_text() and "not the password" not in hq["log"].read_text()


def test_api_worklist_in_priority_order_with_the_trucks_values(hq) -> None:
    wl = hq["session"].get("/api/worklist").json()
    expected = hq["expected"]
    got = [s["study_uid"] for s in wl["studies"]]
    assert got == sorted(expected, key=lambda uid: -expected[uid]["priority"])
    assert expected[got[0]]["repeat"] and expected[got[0]]["priority"] >= 90  # the metal slice
    for study in wl["studies"]:
        want = expected[study["study_uid"]]
        assert study["priority"] == want["priority"]
        assert study["station"] == want["station"]
        assert study["modality"] == want["modality"]
        assert study["reasons"] in want["reasons"] and study["reasons"]
        assert study["repeat_advised"] == want["repeat"]
        if want["density"] is not None:
            assert study["density"] == pytest.approx(want["density"], abs=0.051)
            assert study["composition"]
        else:
            assert study["density"] is None
    mg = next(s for s in wl["studies"] if s["modality"] == "MG")
    assert mg["density"] >= 50 and mg["priority"] >= 40
    # filters
    south = hq["session"].get("/api/worklist", params={"station": "TRUCK_SOUTH"}).json()
    assert {s["station"] for s in south["studies"]} == {"TRUCK_SOUTH"} and south["total"] == 2
    repeat = hq["session"].get("/api/worklist", params={"flag": "repeat"}).json()
    assert [s["study_uid"] for s in repeat["studies"]] == [got[0]]
    assert hq["session"].get("/api/worklist", params={"modality": "MG"}).json()["total"] == 1
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert hq["session"].get("/api/worklist", params={"date": today}).json()["total"] == 3
    assert hq["session"].get("/api/worklist", params={"date": "2001-01-01"}).json()["total"] == 0


def test_api_study_stations_alerts(hq) -> None:
    session, expected = hq["session"], hq["expected"]
    top = max(expected, key=lambda uid: expected[uid]["priority"])
    study = session.get(f"/api/studies/{top}").json()
    report = study["detail"]["report"]
    assert len(report["images"]) == 3 and study["detail"]["segmentations"]
    assert max(i["priority"] for i in report["images"]) == expected[top]["priority"]
    assert any(k["quality_issue"] for k in study["detail"]["key_objects"])
    assert study["viewer_url"].endswith(top)
    assert session.get("/api/studies/1.2.3.4").status_code == 404
    assert session.get("/api/studies/not-a-uid").status_code == 404
    overlay = session.get(f"/study/{top}/overlay.png")
    assert overlay.status_code == 200 and overlay.content[:8] == b"\x89PNG\r\n\x1a\n"
    stations = {s["station"]: s for s in session.get("/api/stations").json()["stations"]}
    assert stations[DRIFTING]["status"] == "alert"
    assert all(stations[s]["status"] == "ok" for s in ("CT_VAN_NORTH", "CT_VAN_WEST", "CT_VAN_SOUTH"))
    assert stations["TRUCK_SOUTH"]["studies"] == 2 and stations["TRUCK_SOUTH"]["scans"] >= 3
    alerts = session.get("/api/alerts").json()
    assert {a["station"] for a in alerts} == {DRIFTING}
    assert alerts[0]["message"].startswith(f"station {DRIFTING}: ")
    schema = session.get("/api/openapi.json").json()
    assert {"/api/worklist", "/api/studies/{study_uid}", "/api/stations", "/api/alerts"} <= set(schema["paths"])


def test_the_cache_is_disposable(hq) -> None:
    """Deleting the hub's SQLite cache loses nothing: it is rebuilt from the PACS."""
    session = hq["session"]
    before = session.get("/api/worklist").json()["studies"]
    cache = hq["root"] / "hub-state" / "hub-cache.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        cache.with_name(cache.name + suffix).unlink(missing_ok=True)
    deadline = time.monotonic() + 60
    while not cache.exists() or session.get("/api/worklist").json()["total"] != len(before):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    after = session.get("/api/worklist").json()["studies"]
    keys = ("study_uid", "priority", "reasons", "flags", "station", "modality", "density")
    assert [{k: s[k] for k in keys} for s in after] == [{k: s[k] for k in keys} for s in before]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/setup.sh)")
def test_pages_in_a_real_browser(hq, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    expected = hq["expected"]
    order = sorted(expected, key=lambda uid: -expected[uid]["priority"])
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"], viewport={"width": 1400, "height": 1000})
        try:
            page = browser.new_page()
            page.goto(hq["url"] + "/fleet")
            assert page.url.endswith("/login")  # sent to sign in first
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", "wrong password!")
            page.click("button[type=submit]")
            page.wait_for_url("**/login?failed=1")
            assert page.locator("#failed").is_visible()
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url("**/worklist")
            rows = page.locator("tr.study")
            assert rows.count() == 3
            assert [rows.nth(i).get_attribute("data-study") for i in range(3)] == order
            assert "repeat advised" in rows.nth(0).inner_text()
            page.screenshot(path=str(shots / "worklist.png"), full_page=True)

            page.select_option("select[name=station]", "TRUCK_NORTH")
            page.click("#apply")
            page.wait_for_url("**station=TRUCK_NORTH**")
            assert rows.count() == 1
            assert rows.nth(0).locator("td.station").inner_text() == "TRUCK_NORTH"
            page.screenshot(path=str(shots / "worklist-filtered.png"), full_page=True)

            page.goto(hq["url"] + f"/study/{order[0]}")
            image = page.locator("#overlay")
            image.wait_for()
            page.wait_for_function("() => document.getElementById('overlay').complete")
            assert page.evaluate("() => document.getElementById('overlay').naturalWidth") > 800
            assert "metal" in page.locator("#qc").inner_text()
            assert page.locator("#viewer").get_attribute("href").endswith(order[0])
            page.screenshot(path=str(shots / "study.png"), full_page=True)

            page.goto(hq["url"] + "/fleet")
            row = page.locator(f"tr.station-row[data-station={DRIFTING}]")
            assert row.get_attribute("data-status") == "alert"
            assert f"station {DRIFTING}:" in row.inner_text()
            assert page.locator("svg.chart").count() >= 2  # a control chart and the scatter
            page.screenshot(path=str(shots / "fleet.png"), full_page=True)

            # new studies appear without a reload: htmx polls the rows
            page.goto(hq["url"] + "/worklist")
            assert page.locator("tr.study").count() == 3
            _send_one_more(hq)
            page.wait_for_function("() => document.querySelectorAll('tr.study').length == 4", timeout=60_000)
        finally:
            browser.close()
    print(f"screenshots in {shots}")
    for name in ("worklist.png", "worklist-filtered.png", "study.png", "fleet.png"):
        assert (shots / name).stat().st_size > 10_000


def _send_one_more(hq) -> None:
    """Another truck's study arrives while the worklist is open."""
    root = hq["root"]
    folder = root / "scanner" / "late"
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.get("MEDSENDX_DATA_DIR", Path(__file__).resolve().parent.parent / ".." / "shared" / "data"))
    src = sorted((data / "ct-head-ge").glob("*.dcm"))[0]
    plant_identity(src, folder / "late.dcm", PATIENTS[3 % len(PATIENTS)], new_uids_seed=generate_uid())
    url = hq["env"]["MEDSENDX_HUB__SOURCE"]
    done = run_cli("send", folder, "--to", url, env={"MEDSENDX_STATE_DIR": str(root / "truck-late"),
                                                     "MEDSENDX_STATION_ID": "TRUCK_LATE"})
    assert done.returncode == 0, done.stderr
