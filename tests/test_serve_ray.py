"""``ssd-serve`` for real: Ray Serve on loopback, concurrent clients, malformed requests, CLI start/stop.

Ray starts once for this file (about 10-30 s on a small machine), local-only: loopback address,
no dashboard, 2 CPUs, no usage reporting.
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
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("ray", reason="ray[serve] not installed (pip install 'ssd_deploy[serve]')")
pytest.importorskip("ray.serve", reason="ray[serve] not installed (pip install 'ssd_deploy[serve]')")

CLIENTS, PER_CLIENT = 8, 10
MAX_BODY, MAX_PIXELS = 3_000_000, 2_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, ctype: str | None, timeout: float = 90.0) -> tuple[int, dict]:
    """POST with exactly these headers (urllib would add a form Content-Type of its own)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        headers = {"Content-Type": ctype} if ctype else {}
        conn.request("POST", u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def _get(url: str, timeout: float = 30.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _encode(path, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, fmt)
    return buf.getvalue()


def _multipart(data: bytes, ctype: str) -> tuple[bytes, str]:
    boundary = "ssdTestBoundary7MA4YWxk"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _assert_same(got: dict, want: dict) -> None:
    assert (got["width"], got["height"]) == (want["width"], want["height"])
    assert len(got["detections"]) == len(want["detections"])
    key = lambda d: (d["class_id"], -d["score"])  # noqa: E731 - equal scores: compare as sets
    for a, b in zip(sorted(got["detections"], key=key), sorted(want["detections"], key=key)):
        assert (a["class_id"], a["class_name"]) == (b["class_id"], b["class_name"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        np.testing.assert_allclose(a["box"], b["box"], atol=0.05)


@pytest.fixture(scope="module", autouse=True)
def _local_only_ray():
    # Set before Ray starts anywhere in this module (the CLI subprocess inherits it).
    old = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    yield
    if old is None:
        os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
    else:
        os.environ["RAY_USAGE_STATS_ENABLED"] = old


# The CLI test starts its own Ray in a subprocess; it runs first so that it never overlaps the
# module's in-process service.
def test_cli_starts_answers_and_stops_on_sigint(ssd300_onnx):
    port = _free_port()
    cmd = [sys.executable, "-m", "ssd_deploy.cli.serve", "--engine", str(ssd300_onnx), "--port", str(port),
           "--max-batch", "2", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    try:
        try:
            line = lines.get(timeout=180)  # the JSON line printed once the service is ready
        except queue.Empty:
            pytest.fail(f"ssd-serve printed no ready line (exit code {proc.poll()})")
        info = json.loads(line)
        assert info["url"] == f"http://127.0.0.1:{port}" and info["model"] == "ssd300_voc"
        assert _get(info["url"] + "/healthz") == (200, {"status": "ok"})
        from test_serve_reliability import _alive, _tree

        tree = _tree(proc.pid)
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=90) == 0, err[-2000:]
        assert "stopped" in err
        deadline = time.monotonic() + 15
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(tree), _alive(tree)  # no Ray process is left behind
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_cli_refuses_a_missing_engine_without_starting_ray(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ssd_deploy.cli.serve", "--engine", str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no such engine file" in proc.stderr


@pytest.fixture(scope="module")
def server(ssd300_onnx):
    from ssd_deploy.serve import ServeOptions, start

    opts = ServeOptions(
        str(ssd300_onnx), port=_free_port(), max_batch=8, batch_wait_ms=20, ray_num_cpus=2,
        max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS, log_to_driver=False, startup_timeout_s=180,
        backend_options={"device": "cpu"},
    )  # fmt: skip
    running = start(opts)
    yield running
    running.stop()
    import ray

    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def detector(ssd300_onnx):
    from ssd_deploy.runtime import Detector

    return Detector.load(ssd300_onnx, device="cpu")


@pytest.fixture(scope="module")
def uploads(sample_paths):
    """(body, content type, query, image key) requests over the sample photos, raw and multipart."""
    out = []
    for i, p in enumerate(sample_paths):
        fmt, ctype = ("JPEG", "image/jpeg") if i % 2 else ("PNG", "image/png")
        data = _encode(p, fmt)
        out.append((data, ctype, "conf_thresh=0.3", data))
        body, mctype = _multipart(data, ctype)
        out.append((body, mctype, "conf_thresh=0.5&top_k=50", data))
    return out


def test_health_and_readiness(server):
    assert _get(server.url + "/healthz") == (200, {"status": "ok"})
    status, info = _get(server.url + "/readyz")
    assert status == 200 and info["ready"] is True
    assert info["model"] == "ssd300_voc" and info["backend"] == "onnxruntime" and info["max_batch"] == 8
    assert info["limits"] == {"max_body_bytes": MAX_BODY, "max_pixels": MAX_PIXELS, "max_top_k": 1000,
                              "max_detections": 1000}  # fmt: skip
    assert info["max_pending"] == 32 and info["pending"] == 0  # 4 x max_batch by default


def test_concurrent_clients_get_the_direct_detector_result(server, detector, uploads):
    expected = {}
    for _, _, query, data in uploads:
        kw = dict(kv.split("=") for kv in query.split("&"))
        params = {k: (float(v) if k == "conf_thresh" else int(v)) for k, v in kw.items()}
        expected[(data, query)] = detector.detect(data, **params).to_dict()
    before = _get(server.url + "/readyz")[1]

    def client(c: int) -> list[tuple[int, int, dict]]:
        got = []
        for k in range(PER_CLIENT):
            i = (c * PER_CLIENT + k) % len(uploads)
            body, ctype, query, _ = uploads[i]
            got.append((i, *_post(f"{server.url}/detect?{query}", body, ctype)))
        return got

    t0 = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for chunk in pool.map(client, range(CLIENTS), timeout=240) for r in chunk]
    elapsed = time.monotonic() - t0
    assert len(results) == CLIENTS * PER_CLIENT
    for i, status, payload in results:
        _, _, query, data = uploads[i]
        assert status == 200, payload
        _assert_same(payload, expected[(data, query)])
    after = _get(server.url + "/readyz")[1]
    served = after["images"] - before["images"]
    assert served == CLIENTS * PER_CLIENT
    # Concurrent clients share batches: fewer network runs than images.
    assert after["batches"] - before["batches"] < served, (after, before, elapsed)
    print(
        f"{served} images from {CLIENTS} clients in {elapsed:.1f} s, "
        f"{after['batches'] - before['batches']} batches"
    )


def _huge_png_header() -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\x00" * 64)  # fmt: skip


def _big_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2000, 1500), (90, 90, 90)).save(buf, "JPEG")  # 3 MP > 2 MP limit, ~30 kB
    return buf.getvalue()


def test_malformed_requests_get_4xx_while_others_are_answered(server, detector, uploads):
    url = server.url + "/detect"
    good_body, good_type, good_query, good_data = uploads[0]
    want = detector.detect(good_data, conf_thresh=0.3).to_dict()
    bad = [
        ("not an image", b"<html>hello</html>" * 10, "image/jpeg", "", 400, "not a JPEG or PNG"),
        ("empty body", b"", "image/png", "", 400, "empty request body"),
        ("truncated", good_data[: len(good_data) // 3], good_type, "", 400, "cannot decode the image"),
        ("huge dimensions", _huge_png_header(), "image/png", "", 413, "40000x40000"),
        ("too many pixels", _big_jpeg(), "image/jpeg", "", 413, "megapixels; the limit is 2.0"),
        ("wrong content type", b'{"image": "..."}', "application/json", "", 415, "unsupported Content-Type"),
        ("no content type", good_data, None, "", 415, "missing Content-Type"),
        (
            "body too large",
            b"\xff\xd8\xff" + bytes(MAX_BODY),
            "image/jpeg",
            "",
            413,
            "exceeds the upload limit",
        ),
        ("bad parameter", good_data, good_type, "?conf_thresh=lots", 400, "must be a number"),
        ("unknown parameter", good_data, good_type, "?threshold=0.5", 400, "unknown query parameter"),
        ("multipart without a file", *_multipart_text(), "", 400, "no file part"),
    ]
    stop = threading.Event()
    good_results: list[tuple[int, dict]] = []

    def keep_asking():
        while not stop.is_set() and len(good_results) < 12:
            good_results.append(_post(f"{url}?{good_query}", good_body, good_type))

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(keep_asking) for _ in range(3)]
        try:
            for name, body, ctype, query, status, message in bad:
                got_status, payload = _post(url + query, body, ctype)
                assert got_status == status, (name, payload)
                assert message in payload["error"], (name, payload)
                assert "\n" not in payload["error"]
            # a method the route does not take
            assert _get(url)[0] == 405
        finally:
            stop.set()
            for f in futures:
                f.result(timeout=120)
    assert good_results, "no good request completed"
    for status, payload in good_results:
        assert status == 200, payload
        _assert_same(payload, want)
    # and the service still answers afterwards
    status, payload = _post(f"{url}?{good_query}", good_body, good_type)
    assert status == 200
    _assert_same(payload, want)


def _multipart_text() -> tuple[bytes, str]:
    boundary = "textOnlyBoundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}--\r\n").encode()  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_broken_engine_fails_to_start_with_its_own_error(server, tmp_path):
    from ssd_deploy.serve import ServeError, ServeOptions, start

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file" * 10)
    opts = ServeOptions(str(bad), port=server.options.port, app_name="broken", route_prefix="/broken",
                        log_to_driver=False, startup_timeout_s=120,
                        backend_options={"device": "cpu"})  # fmt: skip
    with pytest.raises(ServeError, match=r"broken.onnx: ONNX Runtime cannot load it") as e:
        start(opts)
    assert "\n" not in str(e.value)
    # the failed app is gone and the running one is untouched
    assert _get(server.url + "/healthz") == (200, {"status": "ok"})
    from ray import serve

    assert "broken" not in serve.status().applications
