"""Issue 13: who may push into the gateway. dcmtk storescu/echoscu are the real peers:
wrong calling AE refused, wrong called AE refused, allowed accepted, and DICOM over TLS
(storescu's +tls/+tla options against the receiver's certificate, client certificates
required when configured)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from medsendx.config import GatewaySettings
from medsendx.gateway.receiver import Receiver
from medsendx.gateway.staging import Staging
from servers import dcmtk
from pki import make_ca, make_client_cert, make_server_cert


def _gateway(**kw) -> GatewaySettings:
    return GatewaySettings(**{"dicom_port": 0, "min_free_bytes": 0, **kw})


@pytest.fixture
def start(tmp_path: Path):
    started: list[Receiver] = []

    def make(**kw) -> tuple[Receiver, list[Path]]:
        staged: list[Path] = []
        receiver = Receiver(_gateway(**kw), Staging(tmp_path / "staging"), lambda p, n: staged.append(p)).start()
        started.append(receiver)
        return receiver, staged

    yield make
    for receiver in started:
        receiver.stop()


def storescu(port: int, files: list[Path], *extra: str, aet: str = "CT_VAN_1", aec: str = "MEDSENDX"):
    return subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def echoscu(port: int, *extra: str, aet: str = "CT_VAN_1", aec: str = "MEDSENDX"):
    return subprocess.run([dcmtk("echoscu"), "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def test_defaults_bind_loopback_and_allow_nobody(start, ct_head) -> None:
    assert GatewaySettings().bind_address == "127.0.0.1"
    receiver, staged = start()  # the default settings: no calling AE title allowed
    assert receiver._server.server_address[0] == "127.0.0.1"
    refused = storescu(receiver.port, ct_head[:1])
    assert refused.returncode != 0 and staged == []
    assert "Association Rejected" in refused.stderr or "rejected" in refused.stderr.lower()
    assert echoscu(receiver.port).returncode != 0


def test_wrong_calling_ae_refused_allowed_accepted(start, ct_head) -> None:
    receiver, staged = start(allowed_calling_aets=["CT_VAN_1"])
    intruder = storescu(receiver.port, ct_head[:1], aet="LTE_INTRUDER")
    assert intruder.returncode != 0 and staged == []
    assert echoscu(receiver.port, aet="LTE_INTRUDER").returncode != 0
    assert echoscu(receiver.port).returncode == 0
    allowed = storescu(receiver.port, ct_head[:2])
    assert allowed.returncode == 0, allowed.stderr
    assert len(staged) == 2


def test_wrong_called_ae_refused(start, ct_head) -> None:
    receiver, staged = start(allowed_calling_aets=["CT_VAN_1"])
    wrong = storescu(receiver.port, ct_head[:1], aec="SOME_PACS")
    assert wrong.returncode != 0 and staged == []
    assert echoscu(receiver.port, aec="SOME_PACS").returncode != 0


def test_accept_any_is_explicit_and_warns(start, ct_head, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="medsendx"):
        receiver, staged = start(accept_any_calling_aet=True)
    assert any("ANY calling AE title" in r.getMessage() for r in caplog.records)
    done = storescu(receiver.port, ct_head[:1], aet="WHOEVER")
    assert done.returncode == 0, done.stderr
    assert len(staged) == 1
    assert storescu(receiver.port, ct_head[:1], aet="WHOEVER", aec="OTHER").returncode != 0  # called AE still checked


# --- TLS on the receiving side --------------------------------------------------------------------
@pytest.fixture
def pki(tmp_path: Path):
    folder = tmp_path / "pki"
    folder.mkdir()
    truck_ca = make_ca(folder, "truck-ca")
    server_key, server_cert = make_server_cert(truck_ca, folder)
    server_key.chmod(0o600)  # the receiver refuses a private key others may read
    scanner_key, scanner_cert = make_client_cert(truck_ca, folder, "scanner")
    rogue_ca = make_ca(folder, "rogue-ca")
    rogue_key, rogue_cert = make_client_cert(rogue_ca, folder, "rogue")
    return {"ca": truck_ca.pem, "server": (server_key, server_cert), "scanner": (scanner_key, scanner_cert),
            "rogue": (rogue_key, rogue_cert)}


def test_tls_receiver_speaks_only_tls_and_is_verified_by_the_scanner(start, ct_head, pki) -> None:
    key, cert = pki["server"]
    receiver, staged = start(allowed_calling_aets=["CT_VAN_1"], tls_cert_file=str(cert), tls_key_file=str(key))
    plain = storescu(receiver.port, ct_head[:1])
    assert plain.returncode != 0 and staged == []  # no cleartext DICOM on a TLS port
    secure = storescu(receiver.port, ct_head[:2], "+tla", "+cf", str(pki["ca"]))  # storescu checks our certificate
    assert secure.returncode == 0, secure.stderr
    assert len(staged) == 2
    wrong_ae = storescu(receiver.port, ct_head[:1], "+tla", "+cf", str(pki["ca"]), aet="LTE_INTRUDER")
    assert wrong_ae.returncode != 0 and len(staged) == 2  # TLS does not replace the AE check


def test_tls_receiver_can_require_client_certificates(start, ct_head, pki) -> None:
    key, cert = pki["server"]
    receiver, staged = start(allowed_calling_aets=["CT_VAN_1"], tls_cert_file=str(cert), tls_key_file=str(key),
                             tls_ca_file=str(pki["ca"]), tls_require_client_cert=True)
    anonymous = storescu(receiver.port, ct_head[:1], "+tla", "+cf", str(pki["ca"]))
    assert anonymous.returncode != 0 and staged == []
    rogue = storescu(receiver.port, ct_head[:1], "+tls", *map(str, pki["rogue"]), "+cf", str(pki["ca"]))
    assert rogue.returncode != 0 and staged == []
    scanner = storescu(receiver.port, ct_head[:1], "+tls", *map(str, pki["scanner"]), "+cf", str(pki["ca"]))
    assert scanner.returncode == 0, scanner.stderr
    assert len(staged) == 1
    assert echoscu(receiver.port, "+tls", *map(str, pki["scanner"]), "+cf", str(pki["ca"])).returncode == 0


def test_tls_key_others_can_read_is_refused(pki, tmp_path) -> None:
    from medsendx.config import ConfigError

    key, cert = pki["server"]
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="others may read it"):
        Receiver(_gateway(allowed_calling_aets=["CT_VAN_1"], tls_cert_file=str(cert), tls_key_file=str(key)),
                 Staging(tmp_path / "staging2"), lambda p, n: None)
