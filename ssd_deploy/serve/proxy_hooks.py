"""A header read timeout for Ray Serve's HTTP proxy (docs/serving.md, "Limits and overload").

Ray Serve 2.60 runs uvicorn inside its proxy actor and exposes no setting for how long a client
may take to send its request headers: a connection that sends half a request line and stalls is
kept forever. The body is bounded by the replica (``body_timeout_s``), the headers only here.

Serve calls the function named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` inside the proxy
process before its server starts (the documented hook for proxy middlewares). :func:`install`
is that function: it arms a timer on each connection from its first byte of a request until the
request's headers are complete, and closes the connection when it fires. Idle keep-alive
connections are left to uvicorn's own keep-alive timeout. ``ssd-serve`` sets both environment
variables for the Ray it starts; a cluster of your own needs them on every node.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

__all__ = [
    "CALLBACK_PATH",
    "ENV_CALLBACK",
    "ENV_TIMEOUT",
    "install",
    "loopback_replica_grpc",
    "patch_protocol",
]

ENV_CALLBACK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
ENV_TIMEOUT = "SSD_SERVE_HEADER_TIMEOUT_S"
CALLBACK_PATH = "ssd_deploy.serve.proxy_hooks.install"

log = logging.getLogger("ray.serve")


def _in_request(proto: Any) -> bool:
    """Headers of the current request are complete and its answer is not yet sent."""
    cycle = getattr(proto, "cycle", None)
    return cycle is not None and not cycle.response_complete


def patch_protocol(cls: type, timeout_s: float) -> None:
    """Give uvicorn's HTTP protocol class ``cls`` a header timeout of ``timeout_s`` seconds."""
    if getattr(cls, "_ssd_header_timeout", None) is not None:
        cls._ssd_header_timeout = timeout_s
        return
    made, lost, received = cls.connection_made, cls.connection_lost, cls.data_received

    def _disarm(self: Any) -> None:
        timer = getattr(self, "_ssd_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._ssd_header_timer = None

    def _arm(self: Any) -> None:
        if getattr(self, "_ssd_header_timer", None) is None:
            loop = asyncio.get_running_loop()
            self._ssd_header_timer = loop.call_later(type(self)._ssd_header_timeout, _expire, self)

    def _expire(self: Any) -> None:
        self._ssd_header_timer = None
        if not _in_request(self) and not self.transport.is_closing():
            peer = getattr(self, "client", None)
            client = f"{peer[0]}:{peer[1]}" if peer else "a client"
            log.warning("closed the connection of %s: no complete request headers within %g s",
                        client, type(self)._ssd_header_timeout)  # fmt: skip
            self.transport.close()

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        _arm(self)

    def data_received(self: Any, data: bytes) -> None:
        received(self, data)
        # After the parser has seen the bytes: headers complete -> stop the clock; the first
        # bytes of a next request on a keep-alive connection -> start it.
        if _in_request(self):
            _disarm(self)
        elif not self.transport.is_closing():
            _arm(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        lost(self, exc)

    cls._ssd_header_timeout = timeout_s
    cls.connection_made = connection_made
    cls.data_received = data_received
    cls.connection_lost = connection_lost


def install() -> list[Any]:
    """Serve's proxy callback: patch uvicorn's protocols, add no middleware."""
    try:
        timeout_s = float(os.environ.get(ENV_TIMEOUT, "10"))
    except ValueError:
        timeout_s = 10.0
    if not timeout_s > 0:
        return []
    from uvicorn.protocols.http.h11_impl import H11Protocol

    patch_protocol(H11Protocol, timeout_s)
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: uvicorn uses h11
        pass
    else:
        patch_protocol(HttpToolsProtocol, timeout_s)
    return []


def loopback_replica_grpc() -> None:
    """Bind Serve's per-replica gRPC server (inter-deployment calls) to loopback on a local Ray.

    Ray Serve 2.60 binds it to ``[::]:0`` (every interface) whatever the node's address; on the
    single-machine Ray that ``ssd-serve`` starts (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the
    environment of every Ray process) nothing has to reach it from elsewhere. Runs when the
    replica process imports :mod:`ssd_deploy.serve.app`, before Serve starts that server.
    """
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        return
    try:
        from ray.serve._private import replica
    except ImportError:  # pragma: no cover - another Ray layout: leave it alone
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_ssd_loopback", False):
        return

    def add_port(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address[len("[::]:") :]
        return original(server, address)

    add_port._ssd_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port
