"""gen-certs: a CA, server and client pair that verify with stdlib ssl, keys private, no overwrite."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tunkit.errors import ConfigError
from tunkit.services.certs import generate_certs


def test_files_chain_and_usages(tmp_path: Path) -> None:
    paths = generate_certs(tmp_path / "pki")
    ca = x509.load_pem_x509_certificate(paths["ca.pem"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server.pem"].read_bytes())
    client = x509.load_pem_x509_certificate(paths["client.pem"].read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server.issuer == ca.subject and client.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE(paths[key].stat().st_mode) == 0o600
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths["server.pem"], paths["server.key"])
    ctx.load_verify_locations(paths["ca.pem"])


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_certs(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_certs(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == before
