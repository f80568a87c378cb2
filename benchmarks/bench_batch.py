"""Images/s of ``ssd-detect --input`` dataset mode: in-process vs Ray Data with 1 and 2 actors.

    python benchmarks/bench_batch.py --engine export/ssd300.onnx --images 24 --rounds 2 \\
        --out benchmarks/results/batch.md

Generates ``--images`` JPEGs (``--width`` x ``--height``, random content) once, starts one local
Ray (loopback, no dashboard), then runs each mode ``--rounds`` times, interleaved round-robin so
that drifting load on a shared machine hits every mode alike. Each run is a whole job as a user
gets it: listing, model load (in every actor), reading, inference, writing Parquet parts. Ray's
own start-up is timed once, separately (a cluster user pays it once, not per job).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The imports below need ROOT on sys.path (the script runs from a checkout, not installed).
from ssd_deploy.batch import RunOptions, run  # noqa: E402


def make_images(folder: Path, n: int, width: int, height: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        # Smooth random content (a coarse grid upsampled) compresses and decodes like a photo.
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        img.save(folder / f"img{i:05d}.jpg", quality=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads per model (default: its own choice)",
    )
    ap.add_argument("--out", default=None, help="append a Markdown table here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--label", default=None, help="name of the engine in the table")
    args = ap.parse_args(argv)

    from ssd_deploy.raylocal import local_cpus, start_ray

    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        make_images(work / "imgs", args.images, args.width, args.height)
        backend = {"device": "cpu"}
        if args.threads:
            backend["intra_op_threads"] = args.threads
        load0 = os.getloadavg()
        t = time.perf_counter()
        start_ray(None, num_cpus=local_cpus(2, 1.0), object_store_bytes=512 * 1024 * 1024)
        ray_start = time.perf_counter() - t
        modes = {"in-process": {"use_ray": False}, "ray, 1 actor": {"use_ray": True, "actors": 1},
                 "ray, 2 actors": {"use_ray": True, "actors": 2}}  # fmt: skip
        runs: dict[str, list[float]] = {m: [] for m in modes}
        steady: dict[str, list[float]] = {m: [] for m in modes}
        first: dict[str, list[float]] = {m: [] for m in modes}
        k = 0
        for r in range(args.rounds):
            for name, kw in modes.items():
                k += 1
                out = work / f"out{k}.parquet"
                s = run(RunOptions(args.engine, str(work / "imgs"), str(out), batch_size=args.batch,
                                   backend_options=backend, **kw))  # fmt: skip
                assert s.written == args.images and s.errors == 0, s
                runs[name].append(s.images_per_s)
                steady[name].append(s.steady_images_per_s)
                first[name].append(s.first_result_s)
                print(
                    f"round {r + 1} {name}: {s.images_per_s:.2f} images/s ({s.seconds:.1f} s), steady "
                    f"{s.steady_images_per_s:.2f}, first result after {s.first_result_s:.1f} s",
                    flush=True,
                )
        load1 = os.getloadavg()
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(runs["in-process"])
    base_steady = statistics.median(steady["in-process"])
    label = args.label or Path(args.engine).name
    lines = [
        (
            f"\n### {label}: {args.images} images {args.width}x{args.height} JPEG, batch {args.batch}, "
            f"{args.rounds} rounds\n"
        ),
        (
            f"Ray start-up (once, not in the rates): {ray_start:.1f} s. Load average before "
            f"{load0[0]:.1f}, after {load1[0]:.1f}.\n"
        ),
        (
            "| mode | whole job, images/s | each round | vs in-process | first result after, s "
            "| steady, images/s | vs in-process |"
        ),
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, vals in runs.items():
        med, st = statistics.median(vals), statistics.median(steady[name])
        lines.append(
            f"| {name} | {med:.2f} | {', '.join(f'{v:.2f}' for v in vals)} | {med / base:.2f}x "
            f"| {statistics.median(first[name]):.1f} | {st:.2f} | {st / base_steady:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "engine": label, "images": args.images, "size": [args.width, args.height], "batch": args.batch,
            "rounds": args.rounds, "ray_start_s": ray_start, "images_per_s": runs,
            "steady_images_per_s": steady, "first_result_s": first, "loadavg": [load0, load1],
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
