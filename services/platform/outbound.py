"""The one outbound HTTP client of the platform (http tools; webhooks and model endpoints later).

A URL from a tenant is untrusted: it may name the metadata service, a database on the private
network, or a DNS name whose answer changes between a check and the connection (rebinding). So the
check runs where the socket is opened: httpcore asks the network backend for a connection to
(name, port); `_PinningBackend` resolves the name once, refuses the whole name if ANY answer is in
a refused range, and connects to the checked address itself. The URL, the Host header and the TLS
server name (SNI and certificate check) stay the name, because httpcore takes them from the request,
not from the socket. No second resolution exists to disagree with the first.

Beyond the address: a total deadline per request, a cap on the response body (read as a stream,
stopped at the cap), no redirects (a 3xx is `RedirectRefused`), no proxies from the environment (a
proxy would resolve the name itself, past the check). Every refusal is a typed `OutboundError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping

import httpcore
import httpx

from services.platform.settings import ToolSettings

DEFAULT_MAX_RESPONSE_BYTES = 65_536

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the addresses the host resolves to, as strings (IP literals resolve to themselves)."""


class OutboundError(Exception):
    """Base of every refusal or failure of an outbound request. `rule` is a stable short name.

    Not an `AgentmeshError`: these are a remote party's misbehaviour, which the caller turns into
    its own result (a tool's error result, a webhook retry), never a status of the caller's RPC."""

    rule = "outbound"


class AddressRefused(OutboundError):
    """The host resolved to an address in a refused range (and is not in the allow list)."""

    rule = "address"
    description = "a refused address"

    def __init__(self, host: str, address: str):
        where = address if host.lower() == address.lower() else f"{host} resolves to {address},"
        super().__init__(
            f"address refused ({self.rule}): {where} {self.description}; "
            "an operator may allow the host in AGENTMESH_TOOL_ALLOWED_HOSTS"
        )
        self.host = host
        self.address = address


class UnspecifiedAddress(AddressRefused):
    rule = "unspecified"
    description = "the unspecified address"


class LoopbackAddress(AddressRefused):
    rule = "loopback"
    description = "a loopback address"


class LinkLocalAddress(AddressRefused):
    rule = "link-local"
    description = "a link-local address (169.254/16 and fe80::/10 hold cloud metadata services)"


class MulticastAddress(AddressRefused):
    rule = "multicast"
    description = "a multicast address"


class PrivateAddress(AddressRefused):
    rule = "private"
    description = "a private network address"


class ReservedAddress(AddressRefused):
    rule = "reserved"
    description = "a reserved or otherwise not globally routable address"


class InvalidUrl(OutboundError):
    rule = "url"


class UnresolvableHost(OutboundError):
    rule = "dns"

    def __init__(self, host: str, reason: str):
        super().__init__(f"cannot resolve {host}: {reason}")
        self.host = host


class OutboundTimeout(OutboundError):
    rule = "timeout"


class OutboundConnectError(OutboundError):
    rule = "connect"


class RedirectRefused(OutboundError):
    rule = "redirect"

    def __init__(self, status: int, location: str):
        super().__init__(f"redirect refused: status {status} to {location or '(no location)'}")
        self.status = status
        self.location = location


class ResponseTooLarge(OutboundError):
    rule = "too-large"

    def __init__(self, limit: int):
        super().__init__(f"response body larger than {limit} bytes")
        self.limit = limit


# Order matters: Python counts 0.0.0.0/8, 127/8, 169.254/16 and 240/4 as private too; the narrower
# rule names the cause. The last rule catches what is not globally routable and named by none of the
# others (100.64/10 shared address space holds a cloud metadata service too).
_RULES: tuple[tuple[Callable[[IPAddress], bool], type[AddressRefused]], ...] = (
    (lambda ip: ip.is_unspecified, UnspecifiedAddress),
    (lambda ip: ip.is_loopback, LoopbackAddress),
    (lambda ip: ip.is_link_local, LinkLocalAddress),
    (lambda ip: ip.is_multicast, MulticastAddress),
    (lambda ip: ip.is_reserved, ReservedAddress),
    (lambda ip: ip.is_private, PrivateAddress),
    (lambda ip: not ip.is_global, ReservedAddress),
)


def refusal(host: str, address: str) -> AddressRefused | None:
    """The refusal `address` (an answer for `host`) earns, or None when it may be connected to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: the zone is not the address
    # ::ffff:127.0.0.1 reaches 127.0.0.1: an IPv4-mapped address is judged as the IPv4 one.
    checked: IPAddress = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    for matches, error in _RULES:
        if matches(checked):
            return error(host, address)
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer (getaddrinfo), each address once, in its order."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableHost(host, exc.strerror or str(exc)) from exc
    except UnicodeError as exc:  # a label the idna codec refuses (empty, over 63 characters)
        raise UnresolvableHost(host, str(exc)) from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PinningBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every answer, and connects to a checked address: the socket never sees a name."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, resolver: Resolver, allowed: ToolSettings):
        self._inner = inner
        self._resolver = resolver
        self._allowed = allowed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolver(host, port)
        if not addresses:
            raise UnresolvableHost(host, "no addresses")
        if not self._allowed.allows(host, port):
            for address in addresses:
                refused = refusal(host, address)
                if refused is not None:
                    raise refused
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:  # the next checked address may answer
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundConnectError("unix sockets are not an outbound destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _translate(exc: Exception) -> OutboundError:
    if isinstance(exc, httpcore.TimeoutException):
        return OutboundTimeout(f"timed out ({type(exc).__name__})")
    if isinstance(exc, httpcore.ConnectError):
        return OutboundConnectError(f"cannot connect: {exc or type(exc).__name__}")
    return OutboundError(f"{type(exc).__name__}: {exc}")


_HTTPCORE_ERRORS = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]):
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except _HTTPCORE_ERRORS as exc:
            raise _translate(exc) from exc

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _PinnedTransport(httpx.AsyncBaseTransport):
    """httpx's transport contract over an httpcore pool built with the pinning backend.

    Written out (a dozen lines) instead of swapping the private pool of httpx.AsyncHTTPTransport,
    which has no network_backend argument: a rename there would silently bring back the resolving
    backend; here only public httpcore/httpx API is used."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, ssl_context: ssl.SSLContext):
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=backend, max_connections=100, keepalive_expiry=5.0
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core)
        except _HTTPCORE_ERRORS as exc:
            raise _translate(exc) from exc
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decodes an xn-- name: idna refuses a bad one here
    except (httpx.InvalidURL, ValueError) as exc:  # ValueError: idna's refusals of a host name
        raise InvalidUrl(f"invalid url: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidUrl(f"unsupported scheme {parsed.scheme!r}: only http and https")
    if not host:
        raise InvalidUrl("invalid url: no host")
    return parsed


@dataclasses.dataclass(frozen=True)
class OutboundResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class OutboundClient:
    """`await client.request("POST", url, content=..., headers=..., timeout_seconds=...)`.

    `allowed_hosts` ("host" or "host:port", e.g. from AGENTMESH_TOOL_ALLOWED_HOSTS) skip the address
    rules, nothing else. `resolver` and `network_backend` are seams for tests: a made-up name that
    resolves to 10.0.0.5, a backend that records whether a socket was ever opened."""

    def __init__(
        self,
        *,
        allowed_hosts: tuple[str, ...] = (),
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        resolver: Resolver = system_resolver,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "agentmesh",
    ):
        self.max_response_bytes = max_response_bytes
        # The same matching as the agents' url check, so a url it accepts for a listed host is
        # not refused here (and no unlisted one passes).
        allowed = ToolSettings(allowed_hosts=tuple(h.strip().lower() for h in allowed_hosts if h.strip()))
        backend = _PinningBackend(network_backend or httpcore.AnyIOBackend(), resolver, allowed)
        self._client = httpx.AsyncClient(
            transport=_PinnedTransport(backend, ssl_context or httpx.create_ssl_context()),
            follow_redirects=False,
            trust_env=False,
            # Counted bytes are the bytes held: no compressed body that inflates past the cap.
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout_seconds: float,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> OutboundResponse:
        """The whole response, within `timeout_seconds` from start to the last byte.

        Raises an `OutboundError`: the address rules, `RedirectRefused` for any 3xx,
        `ResponseTooLarge`, `OutboundTimeout`, `OutboundConnectError`. A 4xx/5xx is returned."""
        target = _parse(url)
        try:
            async with asyncio.timeout(timeout_seconds):
                return await self._send(method, target, timeout_seconds, content, headers)
        except TimeoutError as exc:
            raise OutboundTimeout(f"timed out after {timeout_seconds:g} s") from exc
        except httpx.HTTPError as exc:  # an invalid URL or scheme, refused by httpx before sending
            raise OutboundError(f"{type(exc).__name__}: {exc}") from exc

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        timeout_seconds: float,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> OutboundResponse:
        request = self._client.build_request(
            method, url, content=content, headers=headers, timeout=httpx.Timeout(timeout_seconds)
        )
        response = await self._client.send(request, stream=True)
        try:
            if 300 <= response.status_code < 400:
                raise RedirectRefused(response.status_code, response.headers.get("location", ""))
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise ResponseTooLarge(self.max_response_bytes)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_response_bytes:
                    raise ResponseTooLarge(self.max_response_bytes)
            return OutboundResponse(response.status_code, dict(response.headers), bytes(body))
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
