"""A burst against ``ssd-serve`` with and without the admission bound: served, refused, latency,
and how fast ``/healthz`` answers during it.

    python benchmarks/bench_serve_burst.py --engine export/ssd300.onnx --requests 200 --clients 50 \\
        --out benchmarks/results/serve_burst.md

Settings compared (one replica each, the same Ray, interleaved round by round):

- ``bounded``: the defaults (each replica admits ``4 x max_batch`` detection requests, the rest get
  503 + Retry-After at once; probes never wait behind detection work);
- ``unbounded``: ``max_pending=-1`` (every request is admitted and waits its turn; probes still
  do not wait behind it);
- ``v0.1``: the settings before issue 14 (Serve's ``max_ongoing_requests = 4 x max_batch`` for
  everything, no queue bound): probes wait in the same queue as detection.

Each client sends its share of the burst back to back over one keep-alive connection and does
not retry a 503. A prober sends ``GET /healthz`` every 100 ms during the burst.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS: dict[str, dict[str, Any]] = {
    "bounded": {},
    "unbounded": {"max_pending": -1},
    "v0.1": {"max_pending": -1, "max_ongoing_requests": 32, "max_queued_requests": -1},
}


def _jpegs(count: int) -> list[bytes]:
    from PIL import Image

    from ssd_deploy.samples import sample_images

    out = []
    for p in sample_images()[:count]:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _burst(port: int, clients: int, total: int, blobs: list[bytes], probe_every_s: float) -> dict[str, Any]:
    per = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    served: list[float] = []
    refused: list[float] = []
    other: list[int] = []
    probes: list[float] = []
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)
    done = threading.Event()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        gate.wait()
        for k in range(per[i]):
            blob = blobs[(i + k) % len(blobs)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/detect", body=blob, headers={"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                status = -1
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                (served if status == 200 else refused if status == 503 else other).append(
                    ms if status in (200, 503) else status
                )
        conn.close()

    def prober() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                conn.close()
                probes.append((time.perf_counter() - t0) * 1000)
            except OSError:
                probes.append(float("inf"))
            time.sleep(probe_every_s)

    probe = threading.Thread(target=prober, daemon=True)
    try:
        with ThreadPoolExecutor(clients + 1) as pool:
            futures = [pool.submit(client, i) for i in range(clients)]
            gate.wait()
            t0 = time.perf_counter()
            probe.start()
            for f in futures:
                f.result()
            wall = time.perf_counter() - t0
    finally:
        done.set()  # also on Ctrl-C: the prober must not outlive the run
    probe.join()
    return {
        "served": len(served), "refused": len(refused), "errors": len(other), "wall_s": wall,
        "served_p50_ms": _pct(served, 50), "served_p99_ms": _pct(served, 99),
        "refused_p50_ms": _pct(refused, 50),
        "health_p50_ms": _pct(probes, 50), "health_p99_ms": _pct(probes, 99),
        "health_max_ms": max(probes) if probes else None, "health_probes": len(probes),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="export/ssd300.onnx")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--ray-cpus", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray

    from ssd_deploy.serve.app import ServeOptions, _local_ray_init, start

    names = [s for s in args.settings.split(",") if s]
    blobs = _jpegs(8)
    base = {
        "port": args.port,
        "max_batch": args.max_batch,
        "log_to_driver": False,
        "ray_num_cpus": args.ray_cpus,
    }
    _local_ray_init(ServeOptions(args.engine, **base))  # one Ray for every setting
    rows: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            for name in names:
                opts = ServeOptions(args.engine, **base, **SETTINGS[name])
                with start(opts) as running:
                    info = running.readiness() or {}
                    _burst(args.port, 4, 8, blobs, 1.0)  # warm-up
                    row = _burst(args.port, args.clients, args.requests, blobs, 0.1)
                    row.update(setting=name, round=rnd, max_pending=info.get("max_pending"),
                               max_ongoing=opts.ongoing_per_replica)  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    if args.out:
        Path(args.out).write_text(_markdown(rows, command, args))
    return 0


def _fmt(v: Any, nd: int = 0) -> str:
    return "-" if v is None else ("inf" if v == float("inf") else f"{v:.{nd}f}")


def _markdown(rows: list[dict[str, Any]], command: str, args: argparse.Namespace) -> str:
    lines = [
        "# Burst against ssd-serve: with and without the admission bound",
        "",
        f"`{command}`",
        "",
        (
            f"{args.requests} requests from {args.clients} clients (each sends its share back to back over "
            f"one keep-alive connection, no retries), one replica, max batch {args.max_batch}, "
            "ONNX Runtime CPU, "
            f"SSD300 JPEG uploads of the sample photos. `GET /healthz` every 100 ms during the burst. "
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, **shared with other jobs while this "
            "ran**: absolute times are noisy, compare settings within a round."
        ),
        "",
        (
            "| round | setting | max pending | Serve max ongoing | served | refused (503) | errors "
            "| wall s | served p50 ms | served p99 ms | 503 p50 ms | healthz p50 ms | healthz p99 ms "
            "| healthz max ms |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['setting']} | {r['max_pending']} | {r['max_ongoing']} | {r['served']} | "
            f"{r['refused']} | {r['errors']} | {_fmt(r['wall_s'], 1)} | {_fmt(r['served_p50_ms'])} | "
            f"{_fmt(r['served_p99_ms'])} | {_fmt(r['refused_p50_ms'])} | {_fmt(r['health_p50_ms'], 1)} | "
            f"{_fmt(r['health_p99_ms'], 1)} | {_fmt(r['health_max_ms'], 1)} |"
        )
    lines += [
        "",
        "Settings: `bounded` = the defaults (a replica admits 4 x max batch detection requests, then "
        "answers 503 + `Retry-After: 1` at once); `unbounded` = `--max-pending -1`; `v0.1` = the settings "
        "before issue 14 (Serve's `max_ongoing_requests = 4 x max batch` for every request, probes "
        "included, and no queue bound).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
