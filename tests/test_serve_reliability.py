"""``ssd-serve`` under hostile but fair clients (issue 14): stalled uploads, expensive parameters,
a burst beyond the queue bound, disconnects, metrics, SIGTERM - then a valid request still gets
the direct Detector's answer.

One ``ssd-serve`` subprocess serves the whole module (Ray starts once, loopback only, small
timeouts so the file stays within about a minute); the SIGTERM test runs last and stops it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] not installed (pip install 'ssd_deploy[serve]')")

MAX_BATCH, MAX_PENDING, BODY_TIMEOUT, HEADER_TIMEOUT = 2, 3, 2.0, 2.0
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
             timeout: float = 60.0) -> tuple[int, dict[str, str], dict]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        r = conn.getresponse()
        raw = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw or b"{}")
    finally:
        conn.close()


def _jpeg(path) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def _tree(root: int) -> dict[int, str]:
    """pid -> start time of ``root`` and all its descendants (from /proc; start time guards
    against a pid being reused after the process ended)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d))
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            out[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return out


def _alive(procs: dict[int, str]) -> list[str]:
    left = []
    for pid, started in procs.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if rest[19] == started and rest[0] != "Z":
            left.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
    return left


_LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listening(pids) -> list[tuple[int, str, int]]:
    """(pid, local address in /proc hex, port) of every listening TCP socket the processes own."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                addr, port = f[1].split(":")
                out.append((inodes[f[9]], addr, int(port, 16)))
    return out


@pytest.fixture(scope="module")
def service(ssd300_onnx):
    port, metrics = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "ssd_deploy.cli.serve", "--engine", str(ssd300_onnx), "--port", str(port),
           "--max-batch", str(MAX_BATCH), "--batch-wait-ms", "20", "--max-pending", str(MAX_PENDING),
           "--body-timeout", str(BODY_TIMEOUT), "--header-timeout", str(HEADER_TIMEOUT),
           "--max-top-k", "400", "--max-detections", "300", "--metrics-port", str(metrics),
           "--cpus-per-replica", "1"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out: queue.Queue[str] = queue.Queue()
    err: list[str] = []
    threading.Thread(target=lambda: [out.put(ln) for ln in proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: [err.append(ln) for ln in proc.stderr], daemon=True).start()
    try:
        try:
            info = json.loads(out.get(timeout=240))
        except queue.Empty:
            pytest.fail(f"ssd-serve did not get ready (exit {proc.poll()}): {''.join(err)[-3000:]}")
        yield {"proc": proc, "port": port, "metrics": metrics, "info": info, "stderr": err}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)


@pytest.fixture(scope="module")
def image_and_answer(sample_paths, ssd300_onnx):
    from ssd_deploy.runtime import Detector

    data = _jpeg(sample_paths[0])
    return data, Detector.load(ssd300_onnx).detect(data, conf_thresh=0.3).to_dict()


def _assert_same(got: dict, want: dict) -> None:
    assert (got["width"], got["height"]) == (want["width"], want["height"])
    assert len(got["detections"]) == len(want["detections"]) > 0

    def key(d: dict) -> tuple:  # equal scores: compare as sets
        return (d["class_id"], -d["score"])

    for a, b in zip(sorted(got["detections"], key=key), sorted(want["detections"], key=key)):
        assert a["class_id"] == b["class_id"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
        np.testing.assert_allclose(a["box"], b["box"], atol=0.05)


def _valid(service, image_and_answer) -> None:
    data, want = image_and_answer
    status, _, payload = _request(service["port"], "POST", "/detect?conf_thresh=0.3", data, "image/jpeg")
    assert status == 200, payload
    _assert_same(payload, want)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_pending": 0}, "max_pending must be >= 1 or -1"),
        ({"max_queued_requests": 0}, "max_queued_requests must be >= 1 or -1"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests must be >= 1"),
        ({"body_timeout_s": float("nan")}, "body_timeout_s must be in"),
        ({"header_timeout_s": 0.0}, "header_timeout_s must be in"),
        ({"max_top_k": 10**6}, "max_top_k must be <= 10000"),
        ({"max_detections": 0}, "limits must be positive"),
        ({"metrics_port": 70000}, "metrics_port must be in"),
    ],
)
def test_bounds_are_validated_before_anything_starts(tmp_path, change, message):
    from ssd_deploy.serve import ServeError, ServeOptions

    with pytest.raises(ServeError, match=message):
        ServeOptions(str(tmp_path / "x.onnx"), **change)


def test_default_bounds():
    from ssd_deploy.serve import ServeOptions

    o = ServeOptions("x.onnx", max_batch=8)
    assert (o.pending_per_replica, o.ongoing_per_replica, o.max_queued_requests) == (32, 128, 64)
    assert ServeOptions("x.onnx", max_pending=100).ongoing_per_replica == 216  # probes keep room
    assert ServeOptions("x.onnx", max_pending=-1).ongoing_per_replica == 128


def test_an_unexpected_error_is_one_json_line():
    import asyncio

    from starlette.exceptions import HTTPException

    from ssd_deploy.serve import app

    handlers = app.api.exception_handlers
    assert handlers[Exception] is app._unexpected and HTTPException in handlers
    r = asyncio.run(app._unexpected(None, RuntimeError("kaput\nsecond line")))
    assert r.status_code == 500 and json.loads(r.body) == {"error": "internal error: RuntimeError: kaput"}


def test_sigterm_during_start_up_is_exit_130_and_leaves_nothing(ssd300_onnx):
    cmd = [sys.executable, "-m", "ssd_deploy.cli.serve", "--engine", str(ssd300_onnx),
           "--port", str(_free_port()), "--quiet"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "starting" in proc.stderr.readline()
        time.sleep(1.5)  # inside ray.init (it takes several seconds)
        tree = _tree(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 130
        err = proc.stderr.read()
        assert "interrupted while starting; stopped" in err and "Traceback" not in err, err[-2000:]
        deadline = time.monotonic() + 15
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(tree), _alive(tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_every_listening_socket_of_the_service_is_loopback(service):
    socks = _listening(_tree(service["proc"].pid))
    ports = {p for _, _, p in socks}
    assert service["port"] in ports and service["metrics"] in ports, socks
    exposed = [(pid, a, p) for pid, a, p in socks if a not in _LOOPBACK_HEX]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert len(socks) >= 5  # GCS, raylet, workers, proxy, metrics: the check saw Ray's processes


def test_stalled_clients_do_not_block_probes_or_a_valid_request(service, image_and_answer):
    port = service["port"]
    stalled = []
    for i in range(40):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        if i % 2:  # complete headers, a body that never arrives in full
            s.sendall(b"POST /detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 100000\r\n\r\n\xff\xd8\xff")  # fmt: skip
        else:  # half a header block
            s.sendall(b"POST /detect HTTP/1.1\r\nHost: t\r\nContent-Ty")
        stalled.append(s)
    try:
        t0 = time.monotonic()
        assert _request(port, "GET", "/healthz", timeout=10)[0] == 200
        assert time.monotonic() - t0 < 2.0
        _valid(service, image_and_answer)
        # Every stalled client is dropped: 408 for the bodies, a closed connection for the headers.
        deadline = time.monotonic() + max(BODY_TIMEOUT, HEADER_TIMEOUT) + 20
        for i, s in enumerate(stalled):
            s.settimeout(max(0.1, deadline - time.monotonic()))
            first = s.recv(200)
            if i % 2:
                assert first.startswith(b"HTTP/1.1 408"), first
            else:
                assert first == b"", first
    finally:
        for s in stalled:
            s.close()
    assert time.monotonic() - t0 < max(BODY_TIMEOUT, HEADER_TIMEOUT) + 20
    _valid(service, image_and_answer)


@pytest.mark.parametrize(
    "query, message",
    [
        ("top_k=1000000", "top_k must be in [1, 400]"),
        ("top_k=401", "top_k must be in [1, 400]"),
        ("keep_top_k=none&conf_thresh=0", "keep_top_k='none' is not served"),
        ("keep_top_k=301", "keep_top_k must be in [1, 300]"),
        ("conf_thresh=-0.1", "conf_thresh must be in [0, 1)"),
        ("nms_thresh=1.5", "nms_thresh must be in (0, 1]"),
        ("conf_thresh=inf", "finite"),
    ],
)
def test_expensive_or_invalid_parameters_are_400(service, image_and_answer, query, message):
    t0 = time.monotonic()
    status, _, payload = _request(
        service["port"], "POST", f"/detect?{query}", image_and_answer[0], "image/jpeg"
    )
    assert (status, time.monotonic() - t0 < 5) == (400, True), payload
    assert message in payload["error"] and "\n" not in payload["error"]


def test_the_largest_allowed_request_is_answered_and_capped(service, image_and_answer):
    status, _, payload = _request(service["port"], "POST", "/detect?top_k=400&conf_thresh=0&keep_top_k=300",
                                  image_and_answer[0], "image/jpeg")  # fmt: skip
    assert status == 200 and len(payload["detections"]) == 300


def test_router_errors_are_json(service):
    assert _request(service["port"], "GET", "/detect")[::2] == (
        405,
        {"error": "Method Not Allowed: GET /detect"},
    )
    assert _request(service["port"], "GET", "/nothing")[::2] == (404, {"error": "Not Found: GET /nothing"})


def test_a_burst_beyond_the_bound_gets_503_with_retry_after(service, image_and_answer):
    port, (data, want) = service["port"], image_and_answer
    results: list[tuple[int, dict[str, str], dict]] = []
    probes: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            assert _request(port, "GET", "/healthz", timeout=10)[0] == 200
            probes.append(time.monotonic() - t0)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(_request, port, "POST", "/detect?conf_thresh=0.3", data, "image/jpeg")
                       for _ in range(24)]  # fmt: skip
            results = [f.result(timeout=120) for f in futures]
    finally:
        done.set()
        prober.join(30)
    codes = [r[0] for r in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= MAX_PENDING, codes
    for status, headers, payload in results:
        if status == 503:
            assert headers.get("retry-after") == "1" and payload["error"].startswith("busy:")
        else:
            _assert_same(payload, want)
    assert probes and max(probes) < 2.0, probes
    _valid(service, image_and_answer)


def test_disconnects_are_one_log_line(service):
    s = socket.create_connection(("127.0.0.1", service["port"]))
    s.sendall(
        b"POST /detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\nab"
    )
    time.sleep(0.5)
    s.close()
    # Serve's proxy cancels the handler: its own line, the replica's access line (CANCELLED) or
    # ours, one line each and no traceback.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        hits = [ln for ln in service["stderr"] if "disconnected" in ln or "POST /detect CANCELLED" in ln]
        if hits:
            break
        time.sleep(0.2)
    assert hits, "".join(service["stderr"])[-3000:]
    time.sleep(1.0)
    assert not any("Traceback" in ln for ln in service["stderr"]), "".join(service["stderr"])[-3000:]


def test_prometheus_metrics(service):
    with urllib.request.urlopen(f"http://127.0.0.1:{service['metrics']}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['ssd_requests_total{code="200",endpoint="detect"}'] >= 1
    assert values['ssd_requests_total{code="400",endpoint="detect"}'] >= 7
    assert values['ssd_rejected_total{reason="busy"}'] >= 1
    assert values['ssd_rejected_total{reason="timeout"}'] >= 1
    assert values['ssd_request_seconds_count{endpoint="detect"}'] >= 10
    assert values["ssd_batch_size_count"] >= 1 and values['ssd_batch_size_bucket{le="2.0"}'] >= 1


def test_sigterm_stops_cleanly_and_leaves_no_process(service, image_and_answer):
    _valid(service, image_and_answer)
    proc = service["proc"]
    tree = _tree(proc.pid)
    assert len(tree) >= 5, tree  # the driver, GCS, raylet, workers
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0, "".join(service["stderr"])[-3000:]
    took = time.monotonic() - t0
    assert "ssd-serve: stopped" in "".join(service["stderr"])
    deadline = time.monotonic() + 15
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(tree), _alive(tree)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", service["port"]), timeout=2).close()
    print(f"stopped in {took:.1f} s")
