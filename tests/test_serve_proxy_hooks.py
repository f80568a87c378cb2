"""The header read timeout that ``ssd-serve`` installs into Ray Serve's HTTP proxy, on a bare
uvicorn server (no Ray): a connection that does not finish its headers is closed, a complete
request and an idle keep-alive connection are not affected."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

uvicorn = pytest.importorskip("uvicorn")

TIMEOUT = 0.5


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _protocols():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    out = [H11Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        pass
    else:
        out.append(HttpToolsProtocol)
    return out


@pytest.fixture(params=_protocols(), ids=lambda c: c.__name__)
def server(request):
    from ssd_deploy.serve.proxy_hooks import patch_protocol

    # A subclass, so uvicorn's own classes stay untouched in this process.
    proto = type(f"Patched{request.param.__name__}", (request.param,), {})
    patch_protocol(proto, TIMEOUT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=proto, lifespan="off", log_level="error",
                            timeout_keep_alive=30)  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def _request(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while not data.endswith(b"ok"):
        chunk = sock.recv(1000)
        assert chunk, data
        data += chunk
    return data


def test_unfinished_headers_are_cut_and_complete_requests_are_not(server):
    stalled = socket.create_connection(("127.0.0.1", server), timeout=10)
    silent = socket.create_connection(("127.0.0.1", server), timeout=10)
    keep = socket.create_connection(("127.0.0.1", server), timeout=10)
    try:
        stalled.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow")
        t0 = time.monotonic()
        assert _request(keep).startswith(b"HTTP/1.1 200")
        assert stalled.recv(100) == b"" and silent.recv(100) == b""  # closed by the server
        assert TIMEOUT * 0.8 <= time.monotonic() - t0 < TIMEOUT + 5
        time.sleep(TIMEOUT * 2)  # idle keep-alive: uvicorn's own (30 s) timeout applies, not ours
        assert _request(keep).startswith(b"HTTP/1.1 200")
        keep.sendall(b"GET / HT")  # a next request that stalls half-way is cut too
        assert keep.recv(100) == b""
    finally:
        for s in (stalled, silent, keep):
            s.close()
