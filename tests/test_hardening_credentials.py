"""Issue 13: credentials. Destination secrets stay out of the outbox database, logs and
outputs; every URL shown is redacted; the one S3 client factory honours verify_tls and
ca_file for delivery, the feature store and ``mine`` alike (moto_server over TLS with a
throwaway CA is the real peer)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import SSLError

from conftest import run_cli
from medsendx.config import load_settings
from medsendx.transport.base import redact_url
from servers import _stop, free_port
from pki import make_ca, make_server_cert

SECRET = "pw-Zq81xK"
TOKEN = "tok-9f2b77aa"


@pytest.mark.parametrize(
    "url, kept",
    [
        (f"dicomweb+https://truck7:{SECRET}@pacs.example/dicom-web", "dicomweb+https://pacs.example/dicom-web"),
        (f"dicomweb+https://{TOKEN}@pacs.example:8443/dicom-web", "dicomweb+https://pacs.example:8443/dicom-web"),
        (f"dicomweb+https://pacs.example/dicom-web?access_token={TOKEN}&site=7",
         "dicomweb+https://pacs.example/dicom-web?access_token=REDACTED&site=7"),
        (f"s3://bucket/prefix?X-Amz-Signature={TOKEN}", "s3://bucket/prefix?X-Amz-Signature=REDACTED"),
        (f"dimse+tls://PACS:{SECRET}@pacs.example:2762", "dimse+tls://PACS@pacs.example:2762"),  # AE title stays
        ("dimse://ORTHANC@127.0.0.1:4242", "dimse://ORTHANC@127.0.0.1:4242"),
        ("/mnt/hq", "/mnt/hq"),
    ],
)
def test_redact_url(url: str, kept: str) -> None:
    shown = redact_url(url)
    assert shown == kept
    assert SECRET not in shown and TOKEN not in shown


def _files_text(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_send_keeps_the_password_out_of_the_outbox_and_the_console(orthanc, ct_head, tmp_path: Path) -> None:
    state = tmp_path / "state"
    url = orthanc.dicomweb_url.replace("http://", f"dicomweb+http://truck7:{SECRET}@")
    done = run_cli("send", ct_head[0], "--to", url, env={"MEDSENDX_STATE_DIR": str(state)})
    assert done.returncode == 0, done.stdout + done.stderr
    # delivered (the full URL was used in memory): the slice and its study's SEG, SR and KOS
    assert len(orthanc.instance_ids()) == 4
    listed = run_cli("queue", "list", "--json", env={"MEDSENDX_STATE_DIR": str(state)})
    for text in (done.stdout, done.stderr, listed.stdout, listed.stderr):
        assert SECRET not in text
    assert SECRET.encode() not in _files_text(state)  # database, WAL, spool, logs
    with sqlite3.connect(state / "outbox.sqlite3") as db:
        (destination,) = db.execute("SELECT DISTINCT destination FROM outbox").fetchone()
    assert destination == redact_url(url) and "truck7" not in destination


def test_destination_from_a_private_file(orthanc, ct_head, tmp_path: Path) -> None:
    import os

    state = tmp_path / "state"
    secret_file = tmp_path / "destination"
    secret_file.write_text(orthanc.dicomweb_url.replace("http://", f"dicomweb+http://truck7:{SECRET}@") + "\n")
    os.chmod(secret_file, 0o644)
    env = {"MEDSENDX_STATE_DIR": str(state), "MEDSENDX_OUTBOX__DESTINATION_FILE": str(secret_file)}
    refused = run_cli("send", ct_head[0], env=env)
    assert refused.returncode == 2 and "others may read it" in " ".join(refused.stderr.split())
    os.chmod(secret_file, 0o600)
    done = run_cli("send", ct_head[0], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(orthanc.instance_ids()) == 4  # the slice and its study's SEG, SR and KOS
    assert SECRET not in done.stdout + done.stderr and SECRET.encode() not in _files_text(state)


# --- one S3 client, TLS honoured everywhere ---------------------------------------------------------
@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory):
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server not installed")
    folder = tmp_path_factory.mktemp("s3-pki")
    ca = make_ca(folder, "s3-ca")
    key, cert = make_server_cert(ca, folder)
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port), "-s", "-c", str(cert), "-k", str(key)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    endpoint = f"https://127.0.0.1:{port}"
    deadline_ok = False
    for _ in range(300):
        try:
            import ssl

            httpx.get(f"{endpoint}/moto-api/", verify=ssl.create_default_context(cafile=str(ca.pem)), timeout=1.0)
            deadline_ok = True
            break
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
            import time

            time.sleep(0.1)
    if not deadline_ok:
        _stop(proc)
        pytest.fail("moto_server over TLS did not start")
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1", verify=str(ca.pem))
    client.create_bucket(Bucket="fleet")
    yield {"endpoint": endpoint, "ca": str(ca.pem), "client": client}
    _stop(proc)


def _s3_env(tls_s3, **outbox: str) -> dict[str, str]:
    env = {"MEDSENDX_S3__ENDPOINT_URL": tls_s3["endpoint"], "MEDSENDX_S3__ACCESS_KEY_ID": "testing",
           "MEDSENDX_S3__SECRET_ACCESS_KEY": "testing", "MEDSENDX_S3__REGION": "us-east-1"}
    env.update({f"MEDSENDX_OUTBOX__{k.upper()}": v for k, v in outbox.items()})
    return env


def _row(i: int) -> dict:
    return {"sop_instance_uid": f"2.25.{i}", "station": "TRUCK_7", "modality": "CT", "air_mean": -990.0 - i}


def test_feature_store_honours_ca_file_and_verify_tls(tls_s3) -> None:
    from medsendx.fleet import FeatureStore

    verified = load_settings(environ=_s3_env(tls_s3, ca_file=tls_s3["ca"]))
    written = FeatureStore("s3://fleet/verified", verified).append([_row(1)])
    assert written.startswith("s3://fleet/verified/")
    # Without our CA the server's certificate is not trusted: the store must refuse, not ignore.
    untrusted = load_settings(environ=_s3_env(tls_s3))
    with pytest.raises(SSLError):
        FeatureStore("s3://fleet/untrusted", untrusted).append([_row(2)])
    off = load_settings(environ=_s3_env(tls_s3, verify_tls="false"))
    assert FeatureStore("s3://fleet/verified", off).files() == [written]


def test_mine_and_send_reach_s3_over_verified_tls(tls_s3, ct_head, tmp_path: Path) -> None:
    from medsendx.fleet import FeatureStore
    from medsendx.fleet.report import mine

    settings = load_settings(environ=_s3_env(tls_s3, ca_file=tls_s3["ca"]))
    FeatureStore("s3://fleet/mine", settings).append([_row(i) for i in range(5)])
    report = mine(["s3://fleet/mine"], tmp_path / "report", settings, progress=False)
    assert report["_sources"].s3_objects == 1
    assert report["_sources"].temp_dirs == []  # the fetched copies are gone
    untrusted = load_settings(environ=_s3_env(tls_s3))
    with pytest.raises(SSLError):
        mine(["s3://fleet/mine"], tmp_path / "r2", untrusted, progress=False)
    # delivery uses the same factory: verified with the CA, and delivered
    done = run_cli("send", ct_head[0], "--to", "s3://fleet/station-07", "--timeout", "60",
                   env={"MEDSENDX_STATE_DIR": str(tmp_path / "state"), **_s3_env(tls_s3, ca_file=tls_s3["ca"])})
    assert done.returncode == 0, done.stdout + done.stderr
    keys = tls_s3["client"].list_objects_v2(Bucket="fleet", Prefix="station-07/").get("KeyCount", 0)
    assert keys == 4  # the slice and its study's SEG, SR and KOS
