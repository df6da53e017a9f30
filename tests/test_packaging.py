"""packaging/medsendx-gateway.service: systemd accepts it, and it asks for what the gateway
needs (notify + watchdog, state directory, a dedicated user, hardening).

``systemd-analyze verify`` is the oracle: it parses the unit as systemd would and prints a
line for every unknown key or bad value (it still exits 0 for those, so the test also
requires it to print nothing). ExecStart must name an existing program for verify; the test
points it at a stand-in executable, every other line is checked as shipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

UNIT = PROJECT_ROOT / "packaging" / "medsendx-gateway.service"
INSTALLED = "/opt/medsendx/bin/medsendx"


def verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    stub = tmp_path / "medsendx"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED, str(stub)))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_accepts_the_unit(tmp_path: Path):
    result = verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@pytest.mark.parametrize(("old", "new"), [("Type=notify", "Type=notifyy"), ("WatchdogSec=30", "WatchdogSecc=30"),
                                          ("ProtectSystem=strict", "ProtectSystem=very")])
def test_verify_catches_a_broken_unit(tmp_path: Path, old: str, new: str):
    """The oracle can fail: one planted mistake is reported."""
    text = UNIT.read_text()
    assert old in text
    result = verify(text.replace(old, new), tmp_path)
    assert result.stdout + result.stderr != ""


def test_unit_asks_for_notify_watchdog_state_user_and_hardening():
    s = settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["StateDirectory"] == ["medsendx"] and s["Environment"].count("MEDSENDX_STATE_DIR=%S/medsendx") == 1
    assert s["User"] == ["medsendx"]  # created by packaging/medsendx.sysusers.conf
    sysusers = (PROJECT_ROOT / "packaging" / "medsendx.sysusers.conf").read_text()
    assert any(line.split()[:2] == ["u", "medsendx"] for line in sysusers.splitlines())
    for key, value in [("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("IPAddressDeny", "any"), ("SocketBindDeny", "any")]:
        assert s[key] == [value], key
    assert "tcp:11112" in s["SocketBindAllow"]
    assert s["CapabilityBoundingSet"] == [""]


def test_security_exposure_is_low(tmp_path: Path):
    """systemd's own score of the sandbox (0 = fully locked down, 10 = none)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
                            capture_output=True, text=True, timeout=60)
    line = next(l for l in result.stdout.splitlines() if "Overall exposure level" in l)
    score = float(line.split(":")[1].split()[0])
    assert score <= 2.0, line
