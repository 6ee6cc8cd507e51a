"""``tunkit p2p gen-certs DIR``: a private CA plus a server and a client certificate for TLS mode.

Contract: :func:`generate_certs` writes ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``,
``client.pem`` and ``client.key`` (EC P-256, PEM; keys mode 0600) into ``directory`` (created
if missing) and returns their paths.  It refuses to overwrite existing files (ConfigError).
The server certificate carries serverAuth, the client one clientAuth, so neither can stand in
for the other.  Made with the ``cryptography`` x509 API; for trying the tunnel out, not a PKI.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunkit.errors import ConfigError

FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")
VALID_DAYS = 825


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tunkit p2p"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier | None,
    now: datetime.datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if usage is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
    return builder.sign(issuer_key, hashes.SHA256())


def generate_certs(directory: str | Path) -> dict[str, Path]:
    """Create the CA, server and client files in ``directory``; returns name -> path."""
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}") from None
    paths = {name: out / name for name in FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)}")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("tunkit p2p CA")
    ca = _issue("tunkit p2p CA", ca_key, ca_name, ca_key, None, now)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("tunkit-server", server_key, ca_name, ca_key, ExtendedKeyUsageOID.SERVER_AUTH, now)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("tunkit-client", client_key, ca_name, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH, now)
    pem = serialization.Encoding.PEM
    try:
        _write(paths["ca.pem"], ca.public_bytes(pem), private=False)
        _write(paths["ca.key"], _key_pem(ca_key), private=True)
        _write(paths["server.pem"], server.public_bytes(pem), private=False)
        _write(paths["server.key"], _key_pem(server_key), private=True)
        _write(paths["client.pem"], client.public_bytes(pem), private=False)
        _write(paths["client.key"], _key_pem(client_key), private=True)
    except OSError as exc:
        raise ConfigError(f"cannot write certificates to {out}: {exc.strerror}") from None
    return paths
