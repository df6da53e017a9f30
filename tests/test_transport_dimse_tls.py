"""``dimse+tls://``: C-STORE over TLS to dcmtk's storescp (built with OpenSSL), with a
throwaway CA and server certificate (tests/pki.py). Verification is on: the right CA in
``outbox.ca_file`` delivers, a wrong CA is refused with a reason that says what to fix."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from delivery_samples import enqueue_all, real_samples
from medsendx.config import load_settings
from medsendx.delivery import Deliverer
from medsendx.outbox import Outbox
from pki import make_ca, make_server_cert
from servers import dcmtk, free_port


@pytest.fixture
def tls_storescp(tmp_path: Path):
    """dcmtk storescp on a TLS port (no client certificate asked), storing into a folder."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "hospital-ca")
    key_file, cert_file = make_server_cert(ca, pki)
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    log = open(tmp_path / "storescp.log", "wb")
    proc = subprocess.Popen(
        [dcmtk("storescp"), "+tls", str(key_file), str(cert_file), "-ic", "+xa", "-od", str(received), str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"storescp with TLS did not start: {(tmp_path / 'storescp.log').read_text()[-500:]}")
        time.sleep(0.05)
    try:
        yield port, ca, received, pki
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _settings(state: Path, **outbox):
    return load_settings(overrides={"state_dir": str(state), "outbox": {
        "connect_timeout_seconds": 5.0, "read_timeout_seconds": 15.0, "backoff_base_seconds": 60.0, **outbox}},
        environ={})


def test_tls_delivery_with_the_hospital_ca_verifies_and_stores_bit_exact(tls_storescp, tmp_path: Path, ct_head) -> None:
    port, ca, received, _ = tls_storescp
    settings = _settings(tmp_path / "state", ca_file=str(ca.pem))
    assert settings.outbox.verify_tls
    outbox = Outbox(settings.outbox_db)
    samples = real_samples(ct_head[:4], tmp_path / "in")
    originals = {s.sop_instance_uid: pydicom.dcmread(s.path).pixel_array for s in samples}
    enqueue_all(outbox, samples, f"dimse+tls://STORESCP@127.0.0.1:{port}")
    stats = Deliverer(outbox, settings).drain(timeout=60)
    assert stats.finished and stats.sent == 4, outbox.items()
    stored = {}
    for path in received.iterdir():
        ds = pydicom.dcmread(path)
        stored[ds.SOPInstanceUID] = ds
    assert stored.keys() == originals.keys()
    for uid, ds in stored.items():
        assert np.array_equal(ds.pixel_array, originals[uid])


def test_tls_peer_signed_by_another_ca_is_refused_with_a_clear_reason(tls_storescp, tmp_path: Path, ct_head) -> None:
    port, _, received, pki = tls_storescp
    stranger = make_ca(pki, "some-other-ca")
    settings = _settings(tmp_path / "state", ca_file=str(stranger.pem))
    outbox = Outbox(settings.outbox_db)
    enqueue_all(outbox, real_samples(ct_head[:2], tmp_path / "in"), f"dimse+tls://STORESCP@127.0.0.1:{port}")
    Deliverer(outbox, settings).run_once()
    rows = outbox.items()
    assert [r.state for r in rows] == ["queued", "queued"], "a trust failure is retried, never dropped"
    assert all("certificate is not trusted" in r.last_error and "outbox.ca_file" in r.last_error for r in rows)
    assert list(received.iterdir()) == [], "nothing may reach an unverified peer"


def test_plain_dimse_to_a_tls_port_fails_transiently(tls_storescp, tmp_path: Path, ct_head) -> None:
    """A destination written without +tls must not fall back to anything: nothing is sent."""
    port, _, received, _ = tls_storescp
    settings = _settings(tmp_path / "state", read_timeout_seconds=3.0)
    outbox = Outbox(settings.outbox_db)
    enqueue_all(outbox, real_samples(ct_head[:1], tmp_path / "in"), f"dimse://STORESCP@127.0.0.1:{port}")
    Deliverer(outbox, settings).run_once()
    assert [r.state for r in outbox.items()] == ["queued"]
    assert list(received.iterdir()) == []
