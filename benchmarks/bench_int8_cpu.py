"""INT8 vs FP32 network time on ONNX Runtime CPU, batch 1 and 8, interleaved in one run.

    python benchmarks/bench_int8_cpu.py --fp32 export/ssd300.onnx \\
        --int8 export/ssd300_int8_cpu.onnx --int8 export/ssd300_int8.onnx \\
        [--batch 1 8] [--rounds 15] [--warmup 2] [--threads N] [--out benchmarks/results/int8_cpu.md]

Make the INT8 files first (any calibration set; speed does not depend on it)::

    python -m ssd_deploy.quantize --onnx export/ssd300.onnx --precision int8 --calib-samples
    python -m ssd_deploy.quantize --onnx export/ssd300.onnx --precision int8 --calib-samples \\
        --target onnxruntime

Only ``InferenceSession.run`` is timed (the network; preprocessing and NMS are the same for every
precision). Every round runs every model once per batch size, in a rotating order, so all of them
see the same background load; the speed-up quoted is the median of per-round ratios with a
bootstrap 95% interval (``ssd_deploy.benchmark.stats.paired_ratio``). Inputs are the bundled sample
photos, preprocessed as at inference. Each model's outputs are also compared with FP32's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The imports below need ROOT on sys.path (the script runs from a checkout, not installed).
from ssd_deploy.benchmark.report import load_average, machine_info  # noqa: E402
from ssd_deploy.benchmark.stats import paired_ratio, summarize  # noqa: E402
from ssd_deploy.config import METADATA_KEY, SSDConfig  # noqa: E402
from ssd_deploy.fileio import atomic_write  # noqa: E402
from ssd_deploy.preprocess import preprocess  # noqa: E402
from ssd_deploy.samples import sample_images  # noqa: E402


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in have]
    return []


def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _label(path: str) -> str:
    import onnx

    m = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    prec = meta.get("ssd_deploy.precision", "fp32")
    try:
        target = json.loads(meta.get("ssd_deploy.recipe", "{}")).get("target")
    except json.JSONDecodeError:
        target = None
    return f"{prec} ({target})" if target else prec


def run(args: argparse.Namespace) -> dict[str, Any]:
    paths = [args.fp32] + list(args.int8)
    for p in paths:
        if not Path(p).is_file():
            raise SystemExit(f"error: {p}: no such file (see this script's docstring for how to make it)")
    import onnx

    meta = {p.key: p.value for p in onnx.load(args.fp32, load_external_data=False).metadata_props}
    config = SSDConfig.from_json(meta[METADATA_KEY])
    photos, _ = preprocess(sample_images(), config)
    labels = [_label(p) for p in paths]
    if len(set(labels)) != len(labels):
        labels = [f"{lab} [{Path(p).name}]" for lab, p in zip(labels, paths)]
    sessions = {lab: _session(p, args.threads) for lab, p in zip(labels, paths)}
    base = labels[0]
    load_before = load_average()
    results: dict[str, Any] = {"batches": {}}
    for b in args.batch:
        x = np.ascontiguousarray(photos[np.arange(b) % len(photos)])
        outs = {lab: s.run(["loc", "conf"], {"images": x}) for lab, s in sessions.items()}
        parity = {
            lab: {
                name: {"max": float(np.abs(o - r).max()), "mean": float(np.abs(o - r).mean())}
                for name, o, r in zip(("loc", "conf"), outs[lab], outs[base])
            }
            for lab in labels[1:]
        }
        times: dict[str, list[float]] = {lab: [] for lab in labels}
        for rnd in range(args.warmup + args.rounds):
            order = labels[rnd % len(labels) :] + labels[: rnd % len(labels)]
            for lab in order:
                t0 = time.perf_counter()
                sessions[lab].run(["loc", "conf"], {"images": x})
                dt = time.perf_counter() - t0
                if rnd >= args.warmup:
                    times[lab].append(dt)
        rows = {}
        for lab in labels:
            s = summarize(times[lab], scale=1000.0)
            row = {
                "median_ms": s.median,
                "p90_ms": s.p90,
                "min_ms": s.min,
                "cv_pct": s.cv_pct,
                "images_per_s": b / (s.median / 1000.0),
            }
            if lab != base:
                r = paired_ratio(times[base], times[lab])
                row["speedup"] = {"median": r.median, "low": r.low, "high": r.high}
                row["parity_vs_fp32"] = parity[lab]
            rows[lab] = row
        results["batches"][str(b)] = rows
        print(
            f"batch {b}: "
            + "; ".join(
                f"{lab} {rows[lab]['median_ms']:.1f} ms"
                + (f" ({rows[lab]['speedup']['median']:.2f}x)" if lab != base else "")
                for lab in labels
            ),
            flush=True,
        )
    import onnxruntime as ort

    results.update(
        {
            "models": dict(zip(labels, paths)),
            "threads": args.threads,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "machine": machine_info(),
            "cpu_flags": _cpu_flags(),
            "onnxruntime": ort.__version__,
            "load_average": {"before": load_before, "after": load_average()},
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
    )
    return results


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# INT8 vs FP32 on ONNX Runtime CPU (SSD300)",
        "",
        f"Run {res['date']} with `benchmarks/bench_int8_cpu.py`: {m['cpu']}, {m['usable_cpus']} usable CPU(s)"
        f" ({', '.join(res['cpu_flags']) or 'no SIMD flags found'}), ONNX Runtime {res['onnxruntime']}, "
        f"{res['threads']} intra-op thread(s), {res['rounds']} interleaved rounds after "
        f"{res['warmup']} warm-up. "
        f"Load average before/after: {res['load_average']['before']} / {res['load_average']['after']}.",
        "",
        "Network only (`InferenceSession.run`). Speed-up = median of per-round FP32/INT8 time ratios, "
        "[95% bootstrap interval]. Parity = max / mean |INT8 - FP32| of the heads on the same photos.",
        "",
    ]
    for b, rows in res["batches"].items():
        lines += [
            f"## Batch {b}",
            "",
            "| model | median ms | p90 ms | images/s | speed-up vs FP32 | loc max / mean | conf max / mean |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for lab, r in rows.items():
            sp = r.get("speedup")
            par = r.get("parity_vs_fp32")
            lines.append(
                f"| {lab} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['images_per_s']:.2f} | "
                + (f"**{sp['median']:.2f}x** [{sp['low']:.2f}, {sp['high']:.2f}]" if sp else "1 (baseline)")
                + " | "
                + (
                    f"{par['loc']['max']:.3g} / {par['loc']['mean']:.3g} | "
                    f"{par['conf']['max']:.3g} / {par['conf']['mean']:.3g}"
                    if par
                    else "- | -"
                )
                + " |"
            )
        lines.append("")
    lines += ["Models:", ""] + [f"- {lab}: `{p}`" for lab, p in res["models"].items()] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", default="export/ssd300.onnx")
    p.add_argument("--int8", action="append", default=None, help="INT8 model(s); repeatable")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    )
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--json", default=None, help="write the raw results here")
    args = p.parse_args(argv)
    if args.int8 is None:
        args.int8 = ["export/ssd300_int8_cpu.onnx", "export/ssd300_int8.onnx"]
    res = run(args)
    md = markdown(res)
    print(md)
    for path, text in ((args.out, md), (args.json, json.dumps(res, indent=1))):
        if path:
            atomic_write(path, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
