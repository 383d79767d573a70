"""A `tcp://` engine with mutual TLS: a third private engine listening on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kuadeploy.adapters.docker import Engine, EngineUnavailable, TlsFiles
from tests.fixtures.engines import start_engine, stop_engine

pytestmark = pytest.mark.docker


def issue(
    directory: Path,
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    usage: ExtendedKeyUsageOID | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate (self-signed CA when `issuer` is None), written as NAME.pem/NAME-key.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_engine() -> Iterator[tuple[str, Path]]:
    """(tcp://127.0.0.1:PORT, directory with ca, server, client and other-ca certificates)."""
    with tempfile.TemporaryDirectory(prefix="kua-tls-", dir="/tmp") as root:
        certs = Path(root) / "certs"
        certs.mkdir()
        ca = issue(certs, "ca", None)
        issue(certs, "server", ca, ExtendedKeyUsageOID.SERVER_AUTH)
        issue(certs, "client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
        other_ca = issue(certs, "other-ca", None)
        issue(certs, "stranger", other_ca, ExtendedKeyUsageOID.CLIENT_AUTH)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        engine_dir = Path(root) / "e"
        start_engine(
            engine_dir,
            f"--host=tcp://127.0.0.1:{port}",
            "--tlsverify",
            f"--tlscacert={certs / 'ca.pem'}",
            f"--tlscert={certs / 'server.pem'}",
            f"--tlskey={certs / 'server-key.pem'}",
        )
        try:
            yield f"tcp://127.0.0.1:{port}", certs
        finally:
            stop_engine(engine_dir)


def client_tls(certs: Path, who: str = "client", ca: str = "ca") -> TlsFiles:
    return TlsFiles(
        cert=str(certs / f"{who}.pem"),
        key=str(certs / f"{who}-key.pem"),
        ca=str(certs / f"{ca}.pem"),
    )


async def test_tcp_engine_with_mutual_tls(tls_engine: tuple[str, Path]) -> None:
    url, certs = tls_engine
    async with Engine(url, tls=client_tls(certs)) as engine:
        assert (await engine.ping())[0].isdigit()
        assert await engine.inspect_container("nothing-here") is None


@pytest.mark.parametrize(
    "tls",
    [
        None,  # plain http to a TLS port
        TlsFiles(ca="ca"),  # no client certificate
        "stranger",  # a client certificate from another CA
        "wrong-ca",  # the engine's certificate is not trusted
    ],
)
async def test_tcp_engine_refuses_what_tls_does_not_allow(
    tls_engine: tuple[str, Path], tls: TlsFiles | str | None
) -> None:
    url, certs = tls_engine
    if tls == "stranger":
        tls = client_tls(certs, who="stranger")
    elif tls == "wrong-ca":
        tls = client_tls(certs, ca="other-ca")
    elif isinstance(tls, TlsFiles):
        tls = TlsFiles(ca=str(certs / "ca.pem"))
    async with Engine(url, tls=tls, connect_timeout_s=5) as engine:
        with pytest.raises(EngineUnavailable):
            await engine.ping()
