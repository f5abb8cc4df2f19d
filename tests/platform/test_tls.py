"""TLS when certificate paths are configured; with a CA, mutual TLS: a peer without a client
certificate signed by that CA cannot call."""

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.platform.peers import PeerChannels
from services.platform.settings import TlsSettings
from tests.helpers import build_runtime, start_server


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path, cert, key) -> tuple[str, str]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def pki(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("agentmesh-test-ca", ca_key, None, ca_key, ca=True)
    ca_path, _ = _write(tmp_path / "ca", ca, ca_key)
    out = {"ca": ca_path, "ca_pem": Path(ca_path).read_bytes()}
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        out[name] = _write(tmp_path / name, _cert(name, ca_key, ca.subject, key, ca=False), key)
    return out


async def test_mutual_tls_between_services(settings, pki):
    server_cert, server_key = pki["server"]
    tls = TlsSettings(cert_file=server_cert, key_file=server_key, ca_file=pki["ca"])
    runtime = await build_runtime(dataclasses.replace(settings, tls=tls))
    # Its plaintext channel goes unused: the clients below bring their own credentials.
    running = await start_server(runtime, "agents")
    port = running.address.rsplit(":", 1)[1]
    client_cert, client_key = pki["client"]
    peers = PeerChannels(
        deadline_cap=5, tls=TlsSettings(cert_file=client_cert, key_file=client_key, ca_file=pki["ca"])
    )
    try:
        ok = await health_pb2_grpc.HealthStub(peers.channel(f"localhost:{port}")).Check(
            health_pb2.HealthCheckRequest()
        )
        assert ok.status == health_pb2.HealthCheckResponse.SERVING

        # TLS that trusts the CA but shows no client certificate is turned away.
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca_pem"])
        async with grpc.aio.secure_channel(f"localhost:{port}", creds) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext is turned away too.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await peers.close()
        await running.close()
        await runtime.close()
