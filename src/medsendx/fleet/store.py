"""The feature store: per-scan feature rows as Parquet, per station and day.

Layout under the root (a local folder or an ``s3://bucket/prefix``)::

    station=<key>/day=<YYYY-MM-DD>/<uuid>.parquet

``<key>`` is a short SHA-256 of the station name, not the name itself: the name is read
from the DICOM object, and no value read from an object goes into a file name. The day is
the UTC day the rows were appended (our clock, not a date from the object). Each
``append`` writes new files atomically (temp + rename locally, one PUT on S3), so a crash
never leaves half a file and several writers never collide; ``medsendx mine`` reads them
all with DuckDB.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medsendx.config import Settings, load_settings
from medsendx.fleet.features import CONTEXT_KEYS, FEATURE_KEYS

_INT_KEYS = {"rows", "columns", "instance_number", "features_version"}
_FLOAT_CONTEXT_KEYS = {"kvp", "tube_current_ma", "slice_thickness_mm", "pixel_spacing_mm"}
_STRING_KEYS = set(CONTEXT_KEYS) - _INT_KEYS - _FLOAT_CONTEXT_KEYS
# The fixed part of every file's schema, so that files from CT and MR rows (where some
# columns are all None) still line up; triage_* columns are inferred.
FEATURE_SCHEMA = pa.schema(
    [
        pa.field(key, pa.string() if key in _STRING_KEYS else pa.int64() if key in _INT_KEYS else pa.float64())
        for key in FEATURE_KEYS
    ]
)


def station_key(station: str) -> str:
    """The folder name for a station: a digest, never the (object-derived) name."""
    return hashlib.sha256(station.encode("utf-8")).hexdigest()[:16]


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Feature rows -> Arrow table with the fixed feature schema plus any extra columns."""
    extras: list[str] = []
    for row in rows:
        extras.extend(k for k in row if k not in FEATURE_SCHEMA.names and k not in extras)
    columns = {name: [row.get(name) for row in rows] for name in FEATURE_SCHEMA.names}
    arrays = [pa.array(columns[field.name], type=field.type) for field in FEATURE_SCHEMA]
    fields = list(FEATURE_SCHEMA)
    for name in extras:
        array = pa.array([row.get(name) for row in rows])
        if pa.types.is_null(array.type):
            array = array.cast(pa.string())
        arrays.append(array)
        fields.append(pa.field(name, array.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class FeatureStore:
    """Append feature rows as Parquet under a local folder or an ``s3://`` prefix.

    For S3 the endpoint and credentials come from ``settings.s3`` (``MEDSENDX_S3__*``),
    falling back to the usual ``AWS_*`` variables.
    """

    def __init__(self, root: str, settings: Settings | None = None) -> None:
        self.root = str(root).rstrip("/")
        self.is_s3 = self.root.startswith("s3://")
        self._settings = settings
        self._client = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def append(self, rows: Iterable[dict[str, Any]]) -> str:
        """Write ``rows`` as new Parquet file(s), one per station, under today's folder.

        Returns the location written: the file's path or URI when every row belongs to
        one station (the usual case: one scan), else the store root. Empty input writes
        nothing and returns the root.
        """
        by_station: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_station[str(row.get("station") or "UNKNOWN")].append(row)
        if not by_station:
            return self.root
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        written = ""
        for station, station_rows in by_station.items():
            relative = f"station={station_key(station)}/day={day}/{uuid.uuid4().hex}.parquet"
            data = table_to_parquet_bytes(rows_to_table(station_rows))
            written = self._put(relative, data)
        return written if len(by_station) == 1 else self.root

    def files(self) -> list[str]:
        """Every Parquet file in the store (paths, or s3:// URIs), sorted."""
        if not self.is_s3:
            root = Path(self.root)
            return sorted(str(p) for p in root.rglob("*.parquet")) if root.is_dir() else []
        bucket, prefix = split_s3_uri(self.root)
        out: list[str] = []
        paginator = self.s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []) if obj["Key"].endswith(".parquet"))
        return sorted(out)

    def _put(self, relative: str, data: bytes) -> str:
        if not self.is_s3:
            from medsendx.fsutil import atomic_write_bytes

            path = Path(self.root) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
            return str(path)
        bucket, prefix = split_s3_uri(self.root)
        key = f"{prefix}/{relative}" if prefix else relative
        extra = {}
        if self.settings.s3.server_side_encryption:
            extra["ServerSideEncryption"] = self.settings.s3.server_side_encryption
        self.s3_client().put_object(Bucket=bucket, Key=key, Body=data, **extra)
        return f"s3://{bucket}/{key}"

    def s3_client(self):
        if self._client is None:
            self._client = s3_client(self.settings)
        return self._client


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError("an s3:// location needs a bucket name")
    return bucket, prefix.strip("/")


def s3_client(settings: Settings):
    """The project's S3 client (:func:`medsendx.s3client.s3_client`): ``settings.s3``,
    ``outbox.verify_tls`` and ``outbox.ca_file``."""
    from medsendx.s3client import s3_client as make

    return make(settings)
