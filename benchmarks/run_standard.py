"""The standard comparison on this machine: PyTorch eager vs ONNX Runtime FP32 (vs INT8 if present).

    .venv/bin/python benchmarks/run_standard.py                 # batch 1,4; 15 rounds
    .venv/bin/python benchmarks/run_standard.py --batch 1 --iterations 30 --name quick

It exports ``export/ssd300.onnx`` if missing, writes a PyTorch checkpoint with the same weights
the ONNX file was exported from (seeded weights unless it names a checkpoint), picks up
``export/ssd300_int8.onnx`` (TensorRT-flavour Q/DQ) and ``export/ssd300_int8_cpu.onnx`` (ONNX
Runtime flavour), making them with ``python -m ssd_deploy.quantize --calib-samples`` when missing
(a demo calibration: fine for timing, not for accuracy; ``--no-int8`` skips them), and runs
``ssd-bench`` with all of them interleaved, PyTorch eager as the baseline. Results land in
``out/bench/<name>.{json,csv,md}``; ``--out benchmarks/results`` records them over the committed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ensure_onnx(path: Path) -> None:
    if path.is_file():
        return
    print(f"{path} is missing: exporting it", flush=True)
    subprocess.run([sys.executable, "-m", "ssd_deploy.export", "--size", "300", "--output", str(path)],
                   cwd=ROOT, check=True)  # fmt: skip


def make_int8(onnx_path: Path, target: str) -> None:
    """Quantize with the bundled sample photos: a demo calibration, fine for timing, not for accuracy."""
    print(f"making the {target}-flavour INT8 model of {onnx_path}", flush=True)
    cmd = [sys.executable, "-m", "ssd_deploy.quantize", "--onnx", str(onnx_path), "--precision", "int8",
           "--calib-samples", "--target", target]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def torch_checkpoint_for(onnx_path: Path, cache: Path) -> Path:
    """A ``.pth`` holding the weights ``onnx_path`` was exported from."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    weights = json.loads(meta.get("ssd_deploy.weights", "{}") or "{}")
    if weights.get("source") == "checkpoint" and Path(weights.get("path", "")).is_file():
        return Path(weights["path"])
    seed = int(weights.get("seed", 0))
    out = cache / f"{onnx_path.stem}_seed{seed}.pth"
    if out.is_file():
        return out
    import torch

    from ssd_deploy.config import SSDConfig
    from ssd_deploy.export import load_model

    cfg = SSDConfig.from_json(meta["ssd_deploy.config"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(None, cfg, seed=seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", default="export/ssd300.onnx", help="FP32 ONNX file (exported if missing)")
    ap.add_argument(
        "--int8", default=None, help="TensorRT-flavour INT8 ONNX (default: <onnx>_int8.onnx if present)"
    )
    ap.add_argument(
        "--int8-cpu", default=None, help="ONNX Runtime-flavour INT8 (default: <onnx>_int8_cpu.onnx)"
    )
    ap.add_argument("--no-int8", action="store_true", help="do not quantize missing INT8 models")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="standard_cpu", help="results file stem (default standard_cpu)")
    ap.add_argument(
        "--out",
        default="out/bench",
        help="results folder (default out/bench; pass benchmarks/results to record a run)",
    )
    ap.add_argument(
        "--no-torch", action="store_true", help="leave PyTorch eager out (baseline becomes FP32 ONNX)"
    )
    ap.add_argument("--plot", action="store_true", help="also write <name>.png (needs matplotlib)")
    args = ap.parse_args()

    os.chdir(ROOT)  # relative paths in the recorded command, whatever the caller's folder
    onnx_path = Path(args.onnx)
    ensure_onnx(onnx_path)
    engines: list[str] = []
    if not args.no_torch:
        engines.append(f"pytorch={torch_checkpoint_for(onnx_path, Path('benchmarks') / '.cache')}")
    engines.append(f"onnx_fp32={onnx_path}")
    for label, given, target in (
        ("onnx_int8", args.int8, "tensorrt"),
        ("onnx_int8_cpu", args.int8_cpu, "onnxruntime"),
    ):
        suffix = "_int8" if target == "tensorrt" else "_int8_cpu"
        path = Path(given) if given else onnx_path.with_name(f"{onnx_path.stem}{suffix}.onnx")
        if not path.is_file() and not given and not args.no_int8:
            make_int8(onnx_path, target)
        if path.is_file():
            engines.append(f"{label}={path}")
        else:
            print(f"{path}: not found, comparing without it", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / args.name
    bench_args = [a for e in engines for a in ("--engine", e)] + [
        "--batch", args.batch, "--iterations", str(args.iterations), "--warmup", str(args.warmup),
        "--threads", str(args.threads), "--json", f"{stem}.json", "--csv", f"{stem}.csv",
        "--markdown", f"{stem}.md",
    ]  # fmt: skip
    if args.plot:
        bench_args += ["--plot", f"{stem}.png"]
    from ssd_deploy.cli.bench import main as bench_main

    rc = bench_main(bench_args)
    if rc == 0:
        md = Path(f"{stem}.md")
        script = " ".join(["python", "benchmarks/run_standard.py", *sys.argv[1:]])
        title, _, rest = md.read_text().partition("\n")
        md.write_text(f"{title}\n\nRecorded with `{script}`, which ran the command below.\n{rest}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
