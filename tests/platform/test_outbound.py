"""The outbound client's SSRF rules, pinning, redirects, caps and timeouts, against a real server.

Refusals are checked with a backend that records every socket it is asked to open: a refused
address must be refused before any connection, and nothing here sends to a non-loopback address."""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.orchestration.tools.http import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from services.platform.outbound import (
    AddressRefused,
    InvalidUrl,
    LinkLocalAddress,
    LoopbackAddress,
    MulticastAddress,
    OutboundClient,
    OutboundConnectError,
    OutboundError,
    OutboundResponse,
    OutboundTimeout,
    PrivateAddress,
    RedirectRefused,
    ReservedAddress,
    ResponseTooLarge,
    UnresolvableHost,
    UnspecifiedAddress,
    refusal,
)
from tests.helpers import free_port
from tests.tools_server import ToolServer

SECRET = b"outbound-test-secret"


class RecordingBackend(httpcore.AnyIOBackend):
    """The real socket backend, remembering which (host, port) it was asked to connect to."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return await super().connect_tcp(host, port, timeout, local_address, socket_options)


def fixed_resolver(answers: dict[str, list[str]], asked: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if asked is not None:
            asked.append(host)
        return answers[host]

    return resolve


def signed(body: bytes = b'{"tool":"t","arguments":{}}') -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(SECRET, timestamp, body)}


@pytest.fixture
async def server() -> AsyncIterator[ToolServer]:
    srv = await ToolServer(SECRET, huge_bytes=100_000).start()
    yield srv
    await srv.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[OutboundClient]]:
    made: list[OutboundClient] = []
    yield made
    for client in made:
        await client.aclose()


async def post(client: OutboundClient, url: str, seconds: float = 5.0) -> OutboundResponse:
    body = b'{"tool":"t","arguments":{}}'
    return await client.request("POST", url, content=body, headers=signed(body), timeout_seconds=seconds)


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("127.0.0.1", LoopbackAddress),
        ("[::1]", LoopbackAddress),
        ("10.0.0.1", PrivateAddress),
        ("172.16.0.1", PrivateAddress),
        ("192.168.1.1", PrivateAddress),
        ("[fd00::1]", PrivateAddress),
        ("169.254.169.254", LinkLocalAddress),
        ("[fe80::1]", LinkLocalAddress),
        ("[::ffff:127.0.0.1]", LoopbackAddress),
        ("[::ffff:169.254.169.254]", LinkLocalAddress),
        ("0.0.0.0", UnspecifiedAddress),
        ("[::]", UnspecifiedAddress),
        ("224.0.0.1", MulticastAddress),
        ("240.0.0.1", ReservedAddress),
        ("100.100.100.200", ReservedAddress),
        ("localhost", LoopbackAddress),
    ],
)
async def test_refused_addresses_before_any_connection(
    clients: list[OutboundClient], host: str, error: type[AddressRefused]
) -> None:
    backend = RecordingBackend()
    client = OutboundClient(network_backend=backend)
    clients.append(client)
    with pytest.raises(error) as caught:
        await post(client, f"http://{host}:8080/tool")
    assert caught.value.rule in str(caught.value)
    assert caught.value.address in str(caught.value)
    assert backend.connects == []


async def test_a_name_resolving_to_a_private_address_is_refused(clients: list[OutboundClient]) -> None:
    backend = RecordingBackend()
    client = OutboundClient(
        network_backend=backend, resolver=fixed_resolver({"tools.example.com": ["10.0.0.5"]})
    )
    clients.append(client)
    with pytest.raises(PrivateAddress, match=r"tools\.example\.com resolves to 10\.0\.0\.5"):
        await post(client, "https://tools.example.com/weather")
    assert backend.connects == []


async def test_one_refused_answer_among_public_ones_refuses_the_name(clients: list[OutboundClient]) -> None:
    backend = RecordingBackend()
    resolver = fixed_resolver({"mixed.example.com": ["93.184.216.34", "169.254.169.254"]})
    client = OutboundClient(network_backend=backend, resolver=resolver)
    clients.append(client)
    with pytest.raises(LinkLocalAddress):
        await post(client, "https://mixed.example.com/")
    assert backend.connects == []


def test_public_addresses_pass_the_rules() -> None:
    assert refusal("example.com", "93.184.216.34") is None
    assert refusal("example.com", "2606:2800:220:1:248:1893:25c8:1946") is None


async def test_an_allowed_host_passes(server: ToolServer, clients: list[OutboundClient]) -> None:
    client = OutboundClient(allowed_hosts=("127.0.0.1",))
    clients.append(client)
    response = await post(client, server.url("echo"))
    assert response.status == 200
    assert server.calls[-1].verified


async def test_the_allow_list_takes_host_and_port(server: ToolServer, clients: list[OutboundClient]) -> None:
    exact = OutboundClient(allowed_hosts=(f"127.0.0.1:{server.port}",))
    other_port = OutboundClient(allowed_hosts=(f"127.0.0.1:{server.port + 1}",))
    clients.extend([exact, other_port])
    assert (await post(exact, server.url("echo"))).status == 200
    with pytest.raises(LoopbackAddress):
        await post(other_port, server.url("echo"))


async def test_the_connection_goes_to_the_checked_address(
    server: ToolServer, clients: list[OutboundClient]
) -> None:
    # One resolution per connection, and the socket is opened to its answer, not to the name:
    # a second answer (DNS rebinding) has nowhere to go.
    asked: list[str] = []
    backend = RecordingBackend()
    client = OutboundClient(
        allowed_hosts=("tool.test",),
        resolver=fixed_resolver({"tool.test": ["127.0.0.1"]}, asked),
        network_backend=backend,
    )
    clients.append(client)
    response = await post(client, server.url("echo", host="tool.test"))
    assert response.status == 200
    assert asked == ["tool.test"]
    assert backend.connects == [("127.0.0.1", server.port)]
    assert server.calls[-1].headers["host"] == f"tool.test:{server.port}"


def _certificate_for(name: str, directory: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tool.crt", directory / "tool.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


async def test_tls_checks_the_name_while_connecting_to_the_pinned_address(tmp_path: Path) -> None:
    # The certificate names only tool.test (no IP): the handshake succeeds only if SNI and the
    # hostname check use the name although the socket went to 127.0.0.1.
    certfile, keyfile = _certificate_for("tool.test", tmp_path)
    tls_server = await ToolServer(SECRET, certfile=certfile, keyfile=keyfile).start()
    try:
        trusting = ssl.create_default_context(cafile=certfile)
        client = OutboundClient(
            allowed_hosts=("tool.test",),
            resolver=fixed_resolver({"tool.test": ["127.0.0.1"]}),
            ssl_context=trusting,
        )
        try:
            response = await post(client, tls_server.url("echo", host="tool.test"))
            assert response.status == 200
        finally:
            # Closed first: the server's stop would wait out asyncio's TLS shutdown of a kept-alive one.
            await client.aclose()
    finally:
        await tls_server.stop()


async def test_a_redirect_is_refused_and_not_followed(
    server: ToolServer, clients: list[OutboundClient]
) -> None:
    client = OutboundClient(allowed_hosts=("127.0.0.1",))
    clients.append(client)
    with pytest.raises(RedirectRefused) as caught:
        await post(client, server.url("redirect"))
    assert caught.value.status == 302
    assert caught.value.location == server.url("echo")
    assert [call.path for call in server.calls] == ["/redirect"]


@pytest.mark.parametrize("route", ["huge", "endless"])
async def test_the_response_is_capped(server: ToolServer, clients: list[OutboundClient], route: str) -> None:
    client = OutboundClient(allowed_hosts=("127.0.0.1",), max_response_bytes=4096)
    clients.append(client)
    with pytest.raises(ResponseTooLarge, match="4096"):
        await post(client, server.url(route))


async def test_a_body_at_the_cap_is_whole(server: ToolServer, clients: list[OutboundClient]) -> None:
    client = OutboundClient(allowed_hosts=("127.0.0.1",), max_response_bytes=100_000 + len('{"blob":""}'))
    clients.append(client)
    response = await post(client, server.url("huge"))
    assert len(response.body) == client.max_response_bytes


async def test_the_deadline_covers_the_whole_request(
    server: ToolServer, clients: list[OutboundClient]
) -> None:
    client = OutboundClient(allowed_hosts=("127.0.0.1",))
    clients.append(client)
    with pytest.raises(OutboundTimeout, match=r"0\.3 s"):
        await post(client, server.url("slow"), seconds=0.3)


async def test_nothing_listening_is_a_connect_error(clients: list[OutboundClient]) -> None:
    client = OutboundClient(allowed_hosts=("127.0.0.1",))
    clients.append(client)
    with pytest.raises(OutboundConnectError):
        await post(client, f"http://127.0.0.1:{free_port()}/tool")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://127.0.0.1/tool", InvalidUrl),
        ("", InvalidUrl),
        ("http://", InvalidUrl),
        ("https://:80/", InvalidUrl),
        ("http://[::1", InvalidUrl),
        ("https://xn--a.com/", InvalidUrl),
        # httpx takes these; the name's encoding for DNS refuses them.
        ("https://a..b/", UnresolvableHost),
        ("https://" + "a" * 300 + ".com/", UnresolvableHost),
        ("https://exa mple.invalid/", UnresolvableHost),
    ],
)
async def test_a_bad_url_is_a_typed_error(
    clients: list[OutboundClient], url: str, error: type[OutboundError]
) -> None:
    backend = RecordingBackend()
    client = OutboundClient(network_backend=backend)
    clients.append(client)
    with pytest.raises(error):
        await post(client, url)
    assert backend.connects == []


async def test_an_allowed_ipv6_host_is_written_in_brackets(clients: list[OutboundClient]) -> None:
    backend = RecordingBackend()
    client = OutboundClient(allowed_hosts=("[::1]",), network_backend=backend)
    clients.append(client)
    port = free_port()
    # Past the rules to the socket: nothing listens there, so the connection itself fails.
    with pytest.raises(OutboundConnectError):
        await post(client, f"http://[::1]:{port}/tool")
    assert backend.connects == [("::1", port)]
