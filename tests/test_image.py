"""The OCI image, built by scripts/build-image.sh, runs the gateway end to end.

Containers cannot run on every build machine (crun fails on some sandboxes' cgroups), so the
main test takes the image's root filesystem (``podman image mount``) and runs the image's
own entrypoint in a chroot, as the image's user, with the image's environment, the state
volume and a mounted settings file bound in a private mount namespace. dcmtk's storescu
pushes the GE head CT to its C-STORE port, a real Orthanc receives the de-identified study,
and SIGTERM must stop the gateway within 10 s without losing anything: what a stop left
staged or queued is delivered by the next start. Where a container can run, the same
scenario runs the image itself with ``podman run``.

The first test builds the image (the build is cached by podman's layers: a few seconds
when nothing changed, a few minutes otherwise), so the image tested is the current code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from conftest import PROJECT_ROOT, run_cli
from servers import dcmtk, free_port

pytestmark = pytest.mark.slow
IMAGE = "localhost/medsendx:latest"
STATION = "IMAGE_TEST_UNIT"  # planted in the mounted settings file; must reach Orthanc


def _missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (podman build, image mount and chroot)"
    for tool in ("podman", "mmdebstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    return None


@pytest.fixture(scope="module")
def image() -> dict:
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)
    build = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "build-image.sh")],
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout + build.stderr[-4000:]
    config = json.loads(subprocess.run(["podman", "image", "inspect", "--format", "{{json .Config}}", IMAGE],
                                       capture_output=True, text=True, check=True).stdout)
    return config


@pytest.fixture(scope="module")
def rootfs(image: dict):
    mounted = subprocess.run(["podman", "image", "mount", IMAGE], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"podman image mount failed: {mounted.stderr.strip()}")
    yield Path(mounted.stdout.strip())
    subprocess.run(["podman", "image", "unmount", IMAGE], capture_output=True)


def test_image_metadata(image: dict):
    assert image["User"] == "10001:10001"  # not root
    assert "/var/lib/medsendx" in image["Volumes"]
    assert "MEDSENDX_STATE_DIR=/var/lib/medsendx" in image["Env"]
    assert image["StopSignal"] == "SIGTERM"
    health = json.loads(subprocess.run(["podman", "image", "inspect", "--format", "{{json .HealthCheck}}", IMAGE],
                                       capture_output=True, text=True, check=True).stdout)
    assert health and "/usr/local/bin/medsendx-healthcheck" in health["Test"]


class ChrootGateway:
    """The image's entrypoint in a chroot of its root filesystem, as its user."""

    def __init__(self, rootfs: Path, config: dict, state: Path, etc: Path, env: dict[str, str], log: Path):
        self.rootfs, self.config, self.state, self.etc, self.env, self.log = rootfs, config, state, etc, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ChrootGateway":
        uid, gid = self.config["User"].split(":")
        r = self.rootfs
        # A private mount namespace: the binds vanish with the process and never touch the
        # image. The image is mounted read-only; the state volume and /tmp are writable binds.
        script = (
            f"mount --bind {self.state} {r}/var/lib/medsendx && mount --bind {self.etc} {r}/etc/medsendx"
            f" && mount -t tmpfs tmpfs {r}/tmp && mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev"
            f" && cd / && exec chroot --userspec={uid}:{gid} {r} /usr/bin/env -C {self.config['WorkingDir']} "
            + " ".join(self.config["Entrypoint"] + self.config["Cmd"])
        )
        env = dict(e.split("=", 1) for e in self.config["Env"])
        env.update(self.env)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                     env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self, timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(check, what: str, timeout: float = 180.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"gateway exited ({proc.returncode}) while waiting for {what}:\n"
                                 + (log.read_text(errors="replace")[-4000:] if log else ""))
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n" + (log.read_text(errors="replace")[-4000:] if log else ""))


def healthy(http_port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2).status_code == 200


def echo_ok(port: int) -> bool:
    return subprocess.run([dcmtk("echoscu"), "-aet", "CT_VAN", "-aec", "MEDSENDX", "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode == 0


def assert_study_deidentified(orthanc, originals: list[Path]) -> None:
    """Second reader: the originals' identifying values (read with pydicom) are absent from
    every instance Orthanc stored; the planted station name is there."""
    first = pydicom.dcmread(originals[0], stop_before_pixels=True)
    secrets = {str(first.PatientName), str(first.PatientID), str(first.StudyInstanceUID)} - {""}
    studies = httpx.get(f"{orthanc.url}/studies").json()
    assert len(studies) == 1
    for orthanc_id in orthanc.instance_ids():
        tags = httpx.get(f"{orthanc.url}/instances/{orthanc_id}/simplified-tags").json()
        assert tags["PatientIdentityRemoved"] == "YES"
        assert tags["StationName"] == STATION
        assert not secrets & {str(v) for v in tags.values()}


def test_image_rootfs_in_chroot_storescu_to_orthanc_and_sigterm(image, rootfs, orthanc, ct_head, tmp_path):
    state, etc = tmp_path / "state", tmp_path / "etc"
    state.mkdir()
    etc.mkdir()
    uid, gid = map(int, image["User"].split(":"))
    os.chown(state, uid, gid)
    state.chmod(0o700)
    (etc / "medsendx.toml").write_text(f'station_id = "{STATION}"\n[gateway]\nworkers = 2\nprocesses = 1\n')
    dicom_port, http_port = free_port(), free_port()
    env = {
        "MEDSENDX_GATEWAY__DICOM_PORT": str(dicom_port), "MEDSENDX_GATEWAY__HTTP_PORT": str(http_port),
        "MEDSENDX_GATEWAY__BIND_ADDRESS": "127.0.0.1", "MEDSENDX_GATEWAY__ALLOWED_CALLING_AETS": "CT_VAN", "MEDSENDX_GATEWAY__MIN_FREE_BYTES": "0",
        "MEDSENDX_OUTBOX__DESTINATION": f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        "MEDSENDX_OUTBOX__BACKOFF_BASE_SECONDS": "0.2", "MEDSENDX_OUTBOX__BACKOFF_CAP_SECONDS": "1",
    }
    log = tmp_path / "gateway.log"
    gateway = ChrootGateway(rootfs, image, state, etc, env, log).start()
    try:
        wait_for(lambda: healthy(http_port) and echo_ok(dicom_port), "the gateway to listen", proc=gateway.proc, log=log)
        # the image's own HEALTHCHECK command, run the way the container runtime would
        health_test = json.loads(subprocess.run(["podman", "image", "inspect", "--format", "{{json .HealthCheck.Test}}",
                                                 IMAGE], capture_output=True, text=True, check=True).stdout)

        def healthcheck() -> subprocess.CompletedProcess:
            return subprocess.run(
                ["unshare", "--mount", "sh", "-c", f"mount --bind {etc} {rootfs}/etc/medsendx && exec chroot "
                 f"--userspec={uid}:{gid} {rootfs} " + " ".join(health_test[1:])],
                env={**dict(e.split("=", 1) for e in image["Env"]), **env}, capture_output=True, text=True, timeout=60)

        check = healthcheck()
        assert check.returncode == 0, check.stderr
        push = subprocess.run([dcmtk("storescu"), "-aet", "CT_VAN", "-aec", "MEDSENDX", "127.0.0.1",
                               str(dicom_port), *map(str, ct_head)], capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stdout + push.stderr
        # Every object is acknowledged, so it is durably staged. Stop now, mid-pipeline.
        assert gateway.stop(timeout=10) == 0, log.read_text()[-4000:]
        stopped = json.loads(log.read_text().strip().splitlines()[-1])
        assert stopped["event"] == "gateway stopped"
        # Nothing lost: every object is in Orthanc, still staged, or queued in the outbox...
        figures = json.loads(run_cli("status", "--json", env={"MEDSENDX_STATE_DIR": str(state)}).stdout)
        in_pacs = len(orthanc.instance_ids())
        assert figures["received_total"] == len(ct_head)
        assert figures["quarantined_total"] == 0 and figures["failed_total"] == 0
        assert figures["sent_total"] == in_pacs
        assert in_pacs + figures["queued"] + figures["staged"] == len(ct_head), figures
        # ...and the next start (same image, same volume) delivers the rest.
        gateway = ChrootGateway(rootfs, image, state, etc, env, log).start()
        wait_for(lambda: len(orthanc.instance_ids()) == len(ct_head), f"{len(ct_head)} instances in Orthanc",
                 proc=gateway.proc, log=log)
        assert gateway.stop(timeout=10) == 0, log.read_text()[-4000:]
        assert healthcheck().returncode == 1  # and the check says so when the gateway is down
    finally:
        gateway.kill()
    assert_study_deidentified(orthanc, ct_head)
    assert sorted(p.name for p in (state / "staging").iterdir()) == []
    text = log.read_bytes()
    first = pydicom.dcmread(ct_head[0], stop_before_pixels=True)
    assert str(first.PatientName).encode() not in text and str(first.PatientID).encode() not in text


def _containers_run() -> str | None:
    probe = subprocess.run(["podman", "run", "--rm", "--network", "none", IMAGE, "--version"],
                           capture_output=True, text=True, timeout=120)
    return None if probe.returncode == 0 else probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "failed"


def test_image_as_container_storescu_to_orthanc_and_sigterm(image, orthanc, ct_head, tmp_path):
    failure = _containers_run()
    if failure is not None:
        pytest.skip(f"containers cannot run on this machine (podman run: {failure})")
    dicom_port, http_port = free_port(), free_port()
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "medsendx.toml").write_text(f'station_id = "{STATION}"\n')
    volume = f"medsendx-test-{os.getpid()}"
    name = f"medsendx-test-{os.getpid()}"
    args = ["podman", "run", "-d", "--name", name, "--network", "host", "-v", f"{volume}:/var/lib/medsendx",
            "-v", f"{etc}:/etc/medsendx:ro",
            "-e", f"MEDSENDX_GATEWAY__DICOM_PORT={dicom_port}", "-e", f"MEDSENDX_GATEWAY__HTTP_PORT={http_port}",
            "-e", "MEDSENDX_GATEWAY__MIN_FREE_BYTES=0", "-e", "MEDSENDX_GATEWAY__ALLOWED_CALLING_AETS=CT_VAN",
            "-e", f"MEDSENDX_OUTBOX__DESTINATION=dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", IMAGE]
    try:
        for attempt in range(2):  # the second run drains what the first stop left
            subprocess.run(args, check=True, capture_output=True, timeout=120)
            wait_for(lambda: healthy(http_port) and echo_ok(dicom_port), "the container to listen")
            if attempt == 0:
                push = subprocess.run([dcmtk("storescu"), "-aet", "CT_VAN", "-aec", "MEDSENDX", "127.0.0.1", str(dicom_port),
                                       *map(str, ct_head)], capture_output=True, text=True, timeout=300)
                assert push.returncode == 0, push.stderr
            else:
                wait_for(lambda: len(orthanc.instance_ids()) == len(ct_head), "all instances in Orthanc")
            stop = subprocess.run(["podman", "stop", "-t", "10", name], capture_output=True, text=True, timeout=60)
            assert stop.returncode == 0
            code = subprocess.run(["podman", "inspect", "--format", "{{.State.ExitCode}}", name],
                                  capture_output=True, text=True).stdout.strip()
            assert code == "0"  # stopped by SIGTERM, not killed after the 10 s grace period
            subprocess.run(["podman", "rm", name], capture_output=True)
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        subprocess.run(["podman", "volume", "rm", "-f", volume], capture_output=True)
    assert_study_deidentified(orthanc, ct_head)
