"""Service throughput and latency under concurrent clients, against direct ``Detector`` calls.

    python benchmarks/bench_serve.py --engine export/ssd300.onnx --clients 1,4,16 --requests 32 \\
        --out benchmarks/results/serve.md

For each client count it runs three modes on the same JPEG uploads (the sample photos):

- ``direct``: N threads calling one shared ``Detector.detect(jpeg_bytes)`` in this process
  (decode + preprocess + network + decode/NMS; no HTTP, no Ray);
- ``serve, batching on``: ``ssd-serve`` with ``--max-batch`` (default 8) over loopback HTTP;
- ``serve, batching off``: the same with ``--max-batch 1``.

Each client sends its requests back to back over one keep-alive connection; latency is per
request (client side), throughput is requests / wall time of the whole run. Ray starts once,
local-only (loopback, no dashboard).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shlex
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def _jpegs(count: int) -> list[bytes]:
    from PIL import Image

    from ssd_deploy.samples import sample_images

    out = []
    for p in sample_images()[:count]:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _run(clients: int, total: int, blobs: list[bytes], call: Callable[[Any, bytes], None],
         connect: Callable[[], Any]) -> tuple[list[float], float]:  # fmt: skip
    """``total`` requests spread over ``clients`` threads -> (latencies in ms, wall seconds)."""
    per = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    lat: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        conn = connect()
        mine = []
        start.wait()
        for k in range(per[i]):
            blob = blobs[(i * 7 + k) % len(blobs)]
            t0 = time.perf_counter()
            call(conn, blob)
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            lat.extend(mine)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        start.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - t0
    return lat, wall


def _http_caller(port: int, prefix: str) -> tuple[Callable[[], Any], Callable[[Any, bytes], None]]:
    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(conn: http.client.HTTPConnection, blob: bytes) -> None:
        conn.request("POST", f"{prefix}/detect", body=blob, headers={"Content-Type": "image/jpeg"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")

    return connect, call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="export/ssd300.onnx")
    p.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=16, help="requests per (mode, client count, round)")
    p.add_argument("--rounds", type=int, default=2, help="rounds; modes are interleaved within a round")
    p.add_argument("--warmup", type=int, default=4, help="requests per mode before the first round")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--modes", default="direct,batch_on,batch_off")
    p.add_argument("--out", default=None, help="write a Markdown table here")
    p.add_argument("--json", default=None, help="write raw numbers here")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(_LABELS)
    if unknown:
        p.error(f"unknown mode(s) {sorted(unknown)}; known: {', '.join(_LABELS)}")
    blobs = _jpegs(8)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    callers: dict[str, tuple[Callable[[], Any], Callable[[Any, bytes], None]]] = {}
    services: dict[str, Any] = {}
    det = None
    if "direct" in modes:
        from ssd_deploy.runtime import Detector

        det = Detector.load(args.engine)
        callers["direct"] = (lambda: None, lambda _c, b: det.detect(b))
    serve_modes = [m for m in ("batch_on", "batch_off") if m in modes]
    if serve_modes:
        import ray

        from ssd_deploy.serve import ServeOptions, start

        ray.init(num_cpus=args.ray_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")  # fmt: skip
    # Both services stay deployed side by side (an idle replica costs no CPU), so that every
    # round measures all modes close together in time on a machine whose load drifts.
    lat: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], float] = {}
    batches: dict[tuple[str, int], int] = {}
    try:
        for mode in serve_modes:
            max_batch = args.max_batch if mode == "batch_on" else 1
            opts = ServeOptions(args.engine, port=args.port, max_batch=max_batch,
                                batch_wait_ms=args.batch_wait_ms, app_name=mode, route_prefix=f"/{mode}",
                                log_to_driver=False)  # fmt: skip
            services[mode] = start(opts)
            callers[mode] = _http_caller(args.port, f"/{mode}")
        for mode in modes:
            connect, call = callers[mode]
            _run(min(4, max(clients)), args.warmup, blobs, call, connect)
        for r in range(args.rounds):
            for n in clients:
                for mode in modes:
                    connect, call = callers[mode]
                    before = services[mode].readiness() if mode in services else None
                    got, seconds = _run(n, args.requests, blobs, call, connect)
                    if before is not None:
                        after = services[mode].readiness() or {}
                        batches[mode, n] = batches.get((mode, n), 0) + after["batches"] - before["batches"]
                    lat.setdefault((mode, n), []).extend(got)
                    wall[mode, n] = wall.get((mode, n), 0.0) + seconds
                    print(
                        f"round {r + 1} {mode:>9} clients={n:<3} {len(got) / seconds:6.2f} img/s", flush=True
                    )
    finally:
        for running in reversed(list(services.values())):
            running.stop()
        if serve_modes:
            import ray

            ray.shutdown()
        if det is not None:
            det.close()

    rows = []
    for n in clients:
        for mode in modes:
            a = np.asarray(lat[mode, n])
            row: dict[str, Any] = {
                "mode": mode, "clients": n, "requests": int(a.size), "wall_s": wall[mode, n],
                "img_per_s": a.size / wall[mode, n], "p50_ms": float(np.percentile(a, 50)),
                "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            }  # fmt: skip
            if (mode, n) in batches:
                row["mean_batch"] = a.size / max(batches[mode, n], 1)
            rows.append(row)
            print(f"{mode:>9} clients={n:<3} {row['img_per_s']:6.2f} img/s  p50 {row['p50_ms']:7.0f} ms  "
                  f"p90 {row['p90_ms']:7.0f} ms  p99 {row['p99_ms']:7.0f} ms")  # fmt: skip

    command = "python " + " ".join(
        shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    env = _environment(args.engine)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"command": command, "environment": env, "rows": rows}, indent=2)
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(_markdown(rows, command, env, args))
        print(f"wrote {args.out}")
    return 0


def _environment(engine: str) -> dict[str, Any]:
    import onnxruntime

    env: dict[str, Any] = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__, "engine": engine,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip
    try:
        import ray

        env["ray"] = ray.__version__
    except ImportError:
        pass
    return env


_LABELS = {"direct": "direct Detector", "batch_on": "serve, batching on", "batch_off": "serve, batching off"}


def _markdown(rows: list[dict[str, Any]], command: str, env: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "| mode | clients | img/s | p50 ms | p90 ms | p99 ms | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mb = r.get("mean_batch")
        mb_txt = "-" if mb is None else ("n/a" if mb != mb else f"{mb:.1f}")
        lines.append(f"| {_LABELS.get(r['mode'], r['mode'])} | {r['clients']} | {r['img_per_s']:.2f} | "
                     f"{r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} | {mb_txt} |")  # fmt: skip
    return "\n".join(
        [
            "# Serving benchmark: Ray Serve vs direct Detector calls",
            "",
            f"Command: `{command}`",
            "",
            f"Environment: {json.dumps(env)}",
            "",
            f"{args.rounds} rounds x {args.requests} requests per row (JPEG uploads of the bundled sample "
            f"photos), modes interleaved within each round; {args.warmup} warm-up requests per mode; "
            "batching on = "
            f"`--max-batch {args.max_batch} --batch-wait-ms {args.batch_wait_ms:g}`, off = `--max-batch 1`; "
            "one replica.",
            "",
            *lines,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
