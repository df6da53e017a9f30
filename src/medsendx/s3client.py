"""The one S3 client factory of the project: delivery (``transport/s3.py``), the feature
store and ``medsendx mine`` all get their boto3 client here, so endpoint, region, keys,
``outbox.verify_tls`` and ``outbox.ca_file`` mean the same thing everywhere.

Credentials come from ``[s3]`` (``MEDSENDX_S3__*``), else boto3's usual chain (``AWS_*``
variables, profiles). They are handed to boto3 and never logged or written anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medsendx.config import Settings


def tls_verify(settings: "Settings") -> bool | str:
    """boto3's ``verify``: False when TLS verification is off, the CA bundle when one is
    configured, else True (the system store)."""
    box = settings.outbox
    if not box.verify_tls:
        return False
    return box.ca_file or True


def s3_client(
    settings: "Settings",
    *,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    max_attempts: int | None = None,
) -> Any:
    """A boto3 S3 client for ``settings.s3`` honouring ``verify_tls`` and ``ca_file``.

    Timeouts default to the outbox's; ``max_attempts`` (botocore's own retries) defaults to
    botocore's, and the delivery transport sets it to 1 because the outbox has its own
    retry policy."""
    import boto3
    from botocore.config import Config

    s3 = settings.s3
    box = settings.outbox
    retries: dict[str, Any] = {"mode": "standard"}
    if max_attempts is not None:
        retries["max_attempts"] = max_attempts
    credentials: dict[str, str] = {}
    if s3.access_key_id and s3.secret_access_key:
        credentials = {"aws_access_key_id": s3.access_key_id, "aws_secret_access_key": s3.secret_access_key}
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url or None,
        region_name=s3.region or None,
        verify=tls_verify(settings),
        config=Config(
            connect_timeout=box.connect_timeout_seconds if connect_timeout is None else connect_timeout,
            read_timeout=box.read_timeout_seconds if read_timeout is None else read_timeout,
            retries=retries,
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
        ),
        **credentials,
    )
