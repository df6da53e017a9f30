"""``dimse+tls://``: C-STORE over TLS to dcmtk's storescp (built with OpenSSL), with a
throwaway CA and server certificate made here. Verification is on: the right CA in
``outbox.ca_file`` delivers, a wrong CA is refused with a reason that says what to fix."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from delivery_samples import enqueue_all, real_samples
from medsendx.config import load_settings
from medsendx.delivery import Deliverer
from medsendx.outbox import Outbox
from servers import dcmtk, free_port


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_ca(folder: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = folder / f"{name}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(key, cert, pem)


def make_server_cert(ca: Authority, folder: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 signed by ``ca``: (key file, certificate file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacs.test")]))
        .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    key_file, cert_file = folder / "server-key.pem", folder / "server-cert.pem"
    _write_key(key, key_file)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


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
