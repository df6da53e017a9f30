"""S3 delivery to a real moto_server: keys, encryption, checksums, multipart resumption."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGLSLossless, generate_uid

from delivery_samples import Sample, enqueue_all, real_samples
from faultproxy import FaultProxy
from medsendx.config import load_settings
from medsendx.delivery import Deliverer
from medsendx.outbox import Outbox


def _settings(state: Path, s3_server, endpoint: str | None = None, outbox: dict | None = None, s3: dict | None = None):
    return load_settings(
        overrides={
            "state_dir": str(state),
            "outbox": outbox or {},
            "s3": {
                "endpoint_url": endpoint or s3_server.endpoint_url,
                "access_key_id": s3_server.access_key,
                "secret_access_key": s3_server.secret_key,
                "region": s3_server.region,
                **(s3 or {}),
            },
        },
        environ={},
    )


def _bucket(s3_server) -> str:
    name = f"hq-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def _keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_s3_keys_encryption_checksum_idempotent_and_bit_exact(s3_server, tmp_path: Path, ct_head) -> None:
    bucket = _bucket(s3_server)
    settings = _settings(tmp_path / "state", s3_server)
    outbox = Outbox(settings.outbox_db)
    samples = real_samples(ct_head[:5], tmp_path / "in")
    originals = {s.sop_instance_uid: pydicom.dcmread(s.path).pixel_array for s in samples}
    destination = f"s3://{bucket}/station-01/dicom"
    enqueue_all(outbox, samples, destination)
    assert Deliverer(outbox, settings).run_once() == 5
    assert outbox.counts()["sent"] == 5

    client = s3_server.client()
    keys = _keys(client, bucket)
    assert keys == sorted(f"station-01/dicom/{s.study_instance_uid}/{s.sop_instance_uid}.dcm" for s in samples)
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ServerSideEncryption"] == "AES256"
        assert head.get("ChecksumSHA256")
        ds = pydicom.dcmread(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
        assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert np.array_equal(ds.pixel_array, originals[ds.SOPInstanceUID])

    again = Outbox(tmp_path / "state2" / "outbox.sqlite3")
    enqueue_all(again, real_samples(ct_head[:5], tmp_path / "again"), destination)
    assert Deliverer(again, settings).run_once() == 5
    assert _keys(client, bucket) == keys, "a re-send overwrites: one object per SOP Instance UID"


def _big_object(folder: Path, megabytes: int = 12) -> Sample:
    """A large uncompressible image (noise), bigger than the multipart threshold."""
    from medsendx.sampledata import ct_head_files

    ds = pydicom.dcmread(ct_head_files()[0])
    rows = 2048
    cols = megabytes * 1024 * 1024 // (rows * 2)
    noise = np.random.default_rng(1).integers(-1000, 3000, size=(rows, cols), dtype=np.int16)
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = noise.tobytes()
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Sample(path, uid, ds.StudyInstanceUID)


def test_multipart_upload_resumes_after_the_link_dies_mid_object(s3_server, tmp_path: Path) -> None:
    bucket = _bucket(s3_server)
    proxy = FaultProxy(("127.0.0.1", s3_server.port), down_after_bytes=7 * 1024 * 1024).start()
    try:
        settings = _settings(
            tmp_path / "state", s3_server, endpoint=proxy.url(),
            outbox={"compress": False, "connect_timeout_seconds": 2.0, "backoff_base_seconds": 0.01},
            s3={"multipart_threshold_bytes": 5 * 1024 * 1024, "multipart_part_bytes": 5 * 1024 * 1024,
                "part_attempts": 2},
        )
        sample = _big_object(tmp_path / "in")
        content = sample.path.read_bytes()
        outbox = Outbox(settings.outbox_db)
        enqueue_all(outbox, [sample], f"s3://{bucket}/hq")

        Deliverer(outbox, settings).run_once()  # part 1 lands, then the link goes down
        (row,) = outbox.items()
        assert row.state == "queued" and row.transient_faults == 1
        assert set(row.transfer_state["parts"]) == {"1"}, "part 1 is remembered across restarts"

        proxy.link_up()
        before = proxy.bytes_up
        restarted = Outbox(settings.outbox_db)  # what a new process sees
        restarted.retry(failed=False, waiting=True)
        Deliverer(restarted, settings).run_once()
        assert restarted.counts()["sent"] == 1
        resent = proxy.bytes_up - before
        assert resent < len(content) - 4 * 1024 * 1024, "only the missing parts went again"

        client = s3_server.client()
        key = f"hq/{sample.study_instance_uid}/{sample.sop_instance_uid}.dcm"
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == content
        assert client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    finally:
        proxy.stop()
