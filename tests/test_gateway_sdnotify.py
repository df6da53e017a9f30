"""systemd notification: READY once the DICOM port accepts, WATCHDOG while the needed threads
live, STOPPING on SIGTERM. systemd is played by a real unix datagram socket the test binds
(as ``$NOTIFY_SOCKET``); the port is checked with dcmtk's echoscu."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env
from medsendx.config import load_settings
from medsendx.gateway.sdnotify import Notifier
from servers import dcmtk, free_port


class FakeSystemd:
    """The receiving end of sd_notify: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.address = address

    def next(self, timeout: float) -> list[str]:
        """The fields of the next datagram; raises TimeoutError when none comes."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def wait_for(self, field: str, timeout: float = 60.0) -> list[list[str]]:
        """Datagrams up to and including the first one carrying ``field``."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            seen.append(msg)
            if field in msg:
                return seen

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()


def echo(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("echoscu"), "-aet", "CT_VAN", "-aec", "MEDSENDX", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def test_notifier_abstract_socket_and_off_without_socket():
    name = f"medsendx-test-{os.getpid()}"
    fake = FakeSystemd("\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("STATUS=hello", "X=1")
        assert fake.next(5) == ["STATUS=hello", "X=1"]
    finally:
        fake.close()
    assert not Notifier({}).enabled and not Notifier({}).ready()
    # the watchdog belongs to another process: not ours to feed
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_seconds == 0
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000"}).watchdog_seconds == 1.0


def test_gateway_ready_watchdog_stopping(tmp_path: Path):
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    port = free_port()
    log = tmp_path / "gateway.log"
    env = cli_env({
        "MEDSENDX_STATE_DIR": str(tmp_path / "state"), "MEDSENDX_GATEWAY__BIND_ADDRESS": "127.0.0.1",
        "MEDSENDX_GATEWAY__MIN_FREE_BYTES": "0", "MEDSENDX_GATEWAY__PROCESSES": "0",
        "MEDSENDX_GATEWAY__ALLOWED_CALLING_AETS": "CT_VAN",
        "NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
    })
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "medsendx", "gateway", "--dicom-port", str(port),
                                 "--http-port", str(free_port()), "--to", str(tmp_path / "hq")],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        before = fake.wait_for("READY=1")
        assert not any("WATCHDOG=1" in m for m in before), "watchdog fed before READY"
        # READY means listening: the first association attempt after it succeeds, no retry.
        result = echo(port)
        assert result.returncode == 0, result.stdout + result.stderr
        pings = [fake.next(30) for _ in range(3)]
        assert all(m == ["WATCHDOG=1"] for m in pings), pings
        proc.send_signal(signal.SIGTERM)
        fake.wait_for("STOPPING=1", timeout=30)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.close()


def test_watchdog_stops_when_a_pipeline_thread_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from medsendx.gateway.service import GatewayService

    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", fake.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    settings = load_settings(environ={
        "MEDSENDX_STATE_DIR": str(tmp_path / "state"), "MEDSENDX_GATEWAY__BIND_ADDRESS": "127.0.0.1",
        "MEDSENDX_GATEWAY__PROCESSES": "0", "MEDSENDX_GATEWAY__WORKERS": "2",
        "MEDSENDX_OUTBOX__DESTINATION": str(tmp_path / "hq"),
    })
    service = GatewayService(settings, dicom_port=0, http_port=0).start()
    try:
        fake.wait_for("READY=1")
        assert fake.wait_for("WATCHDOG=1", timeout=30)
        # A worker returns on a None job (its stop mark): one needed thread is now dead.
        workers = [t for t in service._threads if t.name.startswith("pipeline-")]
        service.jobs.put(None)
        deadline = time.monotonic() + 30
        while all(t.is_alive() for t in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(t.is_alive() for t in workers) == len(workers) - 1
        assert not service.needed_threads_alive()
        time.sleep(1.0)  # let a ping decided before the death arrive, then forget it
        fake.drain()
        with pytest.raises(TimeoutError):  # 20 ping periods with no ping
            fake.next(2.0)
    finally:
        service.stop()
        fake.close()
