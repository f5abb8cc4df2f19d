"""Serving the gateway with uvicorn inside an existing event loop (next to the gRPC server)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette

from services.platform.server import BindError, ensure_port_free


def _bound_unsent(sock: socket.socket | Any, limit: int) -> None:
    """Caps what the kernel holds unsent on every connection accepted from `sock` (they inherit the
    option). Without it Linux grows a connection's send buffer up to tcp_wmem's maximum (4 MiB) while
    its client does not read, and a stalled stream pins that much before uvicorn's write buffer fills
    and the gateway stops pulling from orchestration (measured: 3.8 MiB in Send-Q)."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if limit > 0 and option is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, option, limit)


class HttpServer:
    """`await start()` binds (port 0 picks one) and serves in the running loop; `await stop()`."""

    def __init__(
        self,
        app: Starlette,
        *,
        host: str,
        port: int,
        heartbeat_seconds: float = 20.0,
        reuse_port: bool = False,
    ):
        limits = app.state.gateway.limits
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # The gateway reads no client address, and X-Forwarded-* from the internet is not to be
            # trusted: uvicorn's proxy-header middleware would only cost time on every request.
            proxy_headers=False,
            ws="websockets-sansio",
            # The app closes oversized frames with 1009 itself; uvicorn's cap is a backstop.
            ws_max_size=max(limits.max_frame_bytes * 4, 1 << 20),
            ws_ping_interval=heartbeat_seconds,
            ws_ping_timeout=heartbeat_seconds,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(self.config)
        self._task: asyncio.Task[None] | None = None
        self.port = port
        self._reuse_port = reuse_port
        self._unsent_bytes = app.state.gateway.settings.gateway.unsent_bytes

    def _shared_socket(self) -> socket.socket:
        """The listening socket of one of `serve gateway --workers N`: SO_REUSEPORT lets every
        worker bind the port, and the kernel spreads new connections over them."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.config.host, self.config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise BindError(
                f"cannot listen for HTTP on {self.config.host}:{self.config.port}: {exc.strerror or exc} "
                "(set AGENTMESH_HTTP_PORT)"
            ) from None
        sock.set_inheritable(True)
        return sock

    async def start(self) -> int:
        sockets = None
        if self._reuse_port:
            # The parent checked the port once; the workers share it.
            sockets = [self._shared_socket()]
        else:
            ensure_port_free(self.config.host, self.config.port, what="HTTP", variable="AGENTMESH_HTTP_PORT")
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=sockets))
        while not self.server.started:
            if self._task.done():
                try:
                    self._task.result()
                except SystemExit:
                    # uvicorn exits the process when it cannot bind (the port was taken meanwhile).
                    pass
                raise BindError(f"cannot listen for HTTP on {self.config.host}:{self.config.port}")
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        for server in self.server.servers:
            for sock in server.sockets:
                _bound_unsent(sock, self._unsent_bytes)
        return self.port

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
