"""The cloud link verifies TLS against the system's hashed CA directory (cloud_sync.session.tls_context).

A real TLS server on loopback with its own CA; the CA directory is made the way ca-certificates
makes /etc/ssl/certs (`openssl rehash`). Trusted CA: the request goes through; another CA: refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import ssl
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud_sync import session

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl rehash")


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _ca_dir(folder: Path, cert: Path) -> Path:
    folder.mkdir()
    shutil.copy(cert, folder / cert.name)
    subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True, timeout=30)
    assert list(folder.glob("*.0"))
    return folder


async def _https_server(cert: Path, key: Path) -> tuple[asyncio.Server, int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


async def test_the_system_ca_directory_decides_whom_the_link_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    cert, key = _self_signed(tmp_path / "cloud", "cloud-ca")
    other, _ = _self_signed(tmp_path / "other", "other-ca")
    server, port = await _https_server(cert, key)
    try:
        monkeypatch.setattr(session, "SYSTEM_CA_DIR", _ca_dir(tmp_path / "trusted", cert))
        ctx = session.tls_context()
        assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
        async with httpx.AsyncClient(verify=ctx) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/")).text == "ok"

        monkeypatch.setattr(session, "SYSTEM_CA_DIR", _ca_dir(tmp_path / "untrusted", other))
        async with httpx.AsyncClient(verify=session.tls_context()) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"https://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


def test_without_a_hashed_ca_directory_httpx_keeps_its_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setattr(session, "SYSTEM_CA_DIR", tmp_path / "none")
    assert session.tls_context() is True
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setattr(session, "SYSTEM_CA_DIR", Path("/etc/ssl/certs"))
    assert session.tls_context() is True  # the operator's choice wins, as httpx documents
