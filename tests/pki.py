"""A throwaway certificate authority for the TLS tests (receiver, DIMSE transport, credential
checks): a CA and leaf certificates for 127.0.0.1, written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))


def make_ca(folder: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _validity(x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                  .serial_number(x509.random_serial_number()))
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


def _issue(ca: Authority, folder: Path, name: str, common_name: str, usage: x509.ObjectIdentifier,
           server: bool) -> tuple[Path, Path]:
    """A leaf certificate signed by ``ca``: (key file, certificate file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
    ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = (
            builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    key_file, cert_file = folder / f"{name}-key.pem", folder / f"{name}-cert.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def make_server_cert(ca: Authority, folder: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 signed by ``ca``: (key file, certificate file)."""
    return _issue(ca, folder, "server", "pacs.test", ExtendedKeyUsageOID.SERVER_AUTH, server=True)


def make_client_cert(ca: Authority, folder: Path, name: str) -> tuple[Path, Path]:
    """A client certificate named ``name`` signed by ``ca``: (key file, certificate file)."""
    return _issue(ca, folder, name, name, ExtendedKeyUsageOID.CLIENT_AUTH, server=False)
