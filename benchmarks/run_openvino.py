"""CPU engines compared end to end through ``Detector``: PyTorch eager vs ONNX Runtime FP32/INT8 vs
OpenVINO FP32/BF16/INT8, batch 1 and 8, interleaved round-robin in one run (issue 12).

    .venv/bin/python benchmarks/run_openvino.py                      # batch 1,8; 8 rounds
    .venv/bin/python benchmarks/run_openvino.py --batch 1 --iterations 20 --name quick

Engines (files made as benchmarks/run_standard.py makes them when missing):

* ``pytorch``      eager PyTorch, the baseline (a ``.pth`` with the ONNX file's weights);
* ``ort_fp32``     ``export/ssd300.onnx`` on ONNX Runtime (CPU);
* ``ort_int8``     ``export/ssd300_int8_cpu.onnx`` (``--target onnxruntime`` flavour) on ONNX Runtime;
* ``ov_fp32``      ``export/ssd300.onnx`` on OpenVINO, FP32 inference precision (exact);
* ``ov_bf16``      the same file on OpenVINO with the BF16 inference precision hint;
* ``ov_int8``      ``export/ssd300_int8.onnx`` (TensorRT-flavour Q/DQ) on OpenVINO;
* ``ov_int8_ortq`` the ONNX Runtime-flavour INT8 file on OpenVINO (is that flavour still needed?).

Results land in ``benchmarks/results/<name>.{json,md}``; the Markdown gets a section with achieved
GOP/s against this CPU's peak (how the peak is computed is written there).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Per cycle and core, what one Zen 4 core (AVX-512 executed on two 256-bit FMA pipes) retires at
#: most: FP32 FMA 2 pipes x 8 lanes x 2 ops; BF16 VDPBF16PS twice that (pairs of BF16 per lane);
#: INT8 VPDPBUSD 4 u8*s8 products per 32-bit lane, 2 ops each: 4x FP32.
OPS_PER_CYCLE = {"fp32": 32, "bf16": 64, "int8": 128}


def sgemm_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best FP32 GFLOP/s of numpy's BLAS on an n x n matmul: a practical FP32 ceiling of this CPU."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def cpu_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", default="export/ssd300.onnx")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--name", default="openvino_cpu")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--skip", default="", help="comma-separated engine labels to leave out")
    args = ap.parse_args()
    os.chdir(ROOT)

    from run_standard import ensure_onnx, make_int8, torch_checkpoint_for

    from ssd_deploy.benchmark.report import build_report, load_average, write_json, write_markdown
    from ssd_deploy.benchmark.runner import Settings, check_batches, open_subject, run_benchmark
    from ssd_deploy.cli.bench import load_inputs

    onnx = Path(args.onnx)
    ensure_onnx(onnx)
    int8 = onnx.with_name(f"{onnx.stem}_int8.onnx")
    int8_cpu = onnx.with_name(f"{onnx.stem}_int8_cpu.onnx")
    for path, target in ((int8, "tensorrt"), (int8_cpu, "onnxruntime")):
        if not path.is_file():
            make_int8(onnx, target)
    pth = torch_checkpoint_for(onnx, Path("benchmarks") / ".cache")
    engines = [
        ("pytorch", pth, {}),
        ("ort_fp32", onnx, {"device": "cpu"}),
        ("ort_int8", int8_cpu, {"device": "cpu"}),
        ("ov_fp32", onnx, {"device": "openvino"}),
        ("ov_bf16", onnx, {"device": "openvino", "precision": "bf16"}),
        ("ov_int8", int8, {"device": "openvino"}),
        ("ov_int8_ortq", int8_cpu, {"device": "openvino"}),
    ]
    skip = set(filter(None, args.skip.split(",")))
    subjects = [open_subject(label, str(path), **opts) for label, path, opts in engines if label not in skip]
    batches = tuple(int(b) for b in args.batch.split(","))
    settings = Settings(batches=batches, warmup=args.warmup, iterations=args.iterations)
    settings.validate()
    check_batches(subjects, batches)
    images, inputs = load_inputs(None, False)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = load_average()
    measurements = run_benchmark(subjects, images, settings)
    load_after = load_average()
    command = ["python", "benchmarks/run_openvino.py", *sys.argv[1:]]
    report = build_report(
        subjects, measurements, settings, baseline="pytorch" if "pytorch" not in skip else None,
        cv_threshold=5.0, command=command, inputs=inputs, started=started, load_before=load_before,
        load_after=load_after, intra_op_threads=None,
    )  # fmt: skip

    # Achieved GOP/s against the peak. The clock: the nominal one /proc/cpuinfo reports; the
    # hypervisor hides boost clocks, so the peak is a lower bound of the true one and the share
    # an upper bound. The measured sgemm rate is the practical FP32 ceiling next to it.
    mhz = cpu_mhz() or 0.0
    cores = os.cpu_count() or 1
    peak = {k: cores * mhz / 1e3 * v for k, v in OPS_PER_CYCLE.items()}
    sgemm = sgemm_gflops()
    report["peak"] = {"cores": cores, "mhz": mhz, "ops_per_cycle_per_core": OPS_PER_CYCLE,
                      "peak_gops": peak, "numpy_sgemm_gflops": sgemm}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / f"{args.name}.json")
    write_markdown(report, out / f"{args.name}.md", title="OpenVINO vs ONNX Runtime vs PyTorch eager (CPU)")
    kinds = {"pytorch": "fp32", "ort_fp32": "fp32", "ort_int8": "int8", "ov_fp32": "fp32", "ov_bf16": "bf16",
             "ov_int8": "int8", "ov_int8_ortq": "int8"}  # fmt: skip
    lines = [
        "",
        "## Achieved GOP/s against this CPU's peak",
        "",
        (
            f"Peak = {cores} cores x {mhz:.0f} MHz (nominal clock from /proc/cpuinfo; boost clocks are "
            "hidden by the hypervisor, so the true peak can be higher) x ops per cycle per core of a "
            "Zen 4 core (AVX-512 on two 256-bit pipes): FP32 FMA 32, BF16 dot-product 64, INT8 VNNI 128. "
            f"That is FP32 {peak['fp32']:.0f}, BF16 {peak['bf16']:.0f}, INT8 {peak['int8']:.0f} GOP/s. "
            f"numpy's BLAS sgemm (2048^3) reached {sgemm:.0f} GFLOP/s in this run: "
            "the practical FP32 ceiling."
        ),
        (
            "GOP/s counts 2 ops per multiply-accumulate of the network (ssd_deploy.cost); end to end, "
            "preprocess and decode/NMS time count against it."
        ),
        "",
        (
            "| engine | batch | img/s | GOP/s end to end | GOP/s network alone | kind "
            "| % of peak (e2e / network) |"
        ),
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in report["results"]:
        gops, net = r.get("gflops") or 0.0, r.get("gflops_compute") or 0.0
        kind = kinds.get(r["engine"], "fp32")
        top = peak[kind] or float("nan")
        lines.append(
            f"| {r['engine']} | {r['batch']} | {r['throughput_ips']:.2f} | {gops:.0f} | {net:.0f} | "
            f"{kind} | {100 * gops / top:.0f} % / {100 * net / top:.0f} % |"
        )
    with open(out / f"{args.name}.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    for s in subjects:
        s.detector.close()
    print(f"wrote {out / args.name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
