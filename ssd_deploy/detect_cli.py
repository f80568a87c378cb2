"""``ssd-detect --engine ARTIFACT IMAGE... [--output DIR]``: detections as JSON and annotated PNGs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import ConfigError
from .fileio import atomic_output, atomic_write
from .preprocess import ImageError, load_image
from .runtime import BackendError, Detector


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ssd-detect", description="Run an SSD artifact on images.")
    p.add_argument("--engine", required=True, help=".onnx, .plan or PyTorch checkpoint")
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument("--samples", action="store_true", help="also run on the bundled sample photos (scikit-image)")
    p.add_argument("--output", "-o", default=None, help="folder for <image>.json and <image>.png")
    p.add_argument("--min-score", type=float, default=0.3,
                   help="report and draw detections scoring at least this (default 0.3)")
    p.add_argument("--conf-thresh", type=float, default=None, help="Detect confidence threshold (model default)")
    p.add_argument("--nms-thresh", type=float, default=None, help="NMS IoU threshold (model default)")
    p.add_argument("--top-k", type=int, default=None, help="NMS candidates per class (model default)")
    p.add_argument("--keep-top-k", type=int, default=None, help="cap detections per image (default: no cap)")
    p.add_argument("--device", default=None, help=".onnx engine: auto (default: CUDA when onnxruntime-gpu has "
                   "it, else OpenVINO when installed, else ONNX Runtime CPU), openvino, cpu, cuda, tensorrt")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                   help="OpenVINO inference precision (default fp32: exact; bf16 on CPUs with BF16)")
    return p.parse_args(argv)


def _collect(args: argparse.Namespace) -> list[Path]:
    from .samples import list_images, sample_images

    files: list[Path] = []
    for item in args.images:
        p = Path(item)
        files.extend(list_images(p) if p.is_dir() else [p])
    if args.samples:
        files.extend(sample_images())
    if not files:
        raise ValueError("no images given: pass image files or folders, or --samples")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = _parse(argv)
    # Pipes and CI logs get a fixed, wide table instead of rich's 80-column fallback.
    con = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
    err = Console(stderr=True, highlight=False)
    try:
        files = _collect(args)
        opts = {"device": args.device} if args.device and Path(args.engine).suffix == ".onnx" else {}
        if args.precision:
            if Path(args.engine).suffix.lower() not in (".onnx", ".xml"):
                raise ValueError(f"--precision applies to .onnx/.xml engines (OpenVINO), not {args.engine}")
            opts["precision"] = args.precision
        det = Detector.load(args.engine, **opts)
        out = Path(args.output) if args.output else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        table = Table(title=f"{det.config.name} on {det.backend.name} ({det.backend.precision})")
        for col in ("image", "size", f"n >= {args.min_score}", "best", "ms"):
            table.add_column(col, no_wrap=True, overflow="ellipsis")
        summary = []
        for f in files:
            rgb = load_image(f)
            t0 = time.perf_counter()
            res = det.detect(rgb, conf_thresh=args.conf_thresh, nms_thresh=args.nms_thresh,
                             top_k=args.top_k, keep_top_k=args.keep_top_k)
            ms = (time.perf_counter() - t0) * 1e3
            shown = res.above(args.min_score)
            top = f"{shown.class_names[0]} {shown.scores[0]:.2f}" if len(shown) else "-"
            table.add_row(f.name, f"{rgb.shape[1]}x{rgb.shape[0]}", str(len(shown)), top, f"{ms:.1f}")
            record = {"image": str(f), **shown.to_dict()}
            summary.append(record)
            if out is not None:
                from .draw import draw_detections

                atomic_write(out / f"{f.stem}.json", json.dumps(record, indent=1).encode())
                with atomic_output(out / f"{f.stem}.png") as tmp:
                    draw_detections(rgb, shown).save(tmp, format="PNG")
        con.print(table)
        if out is not None:
            con.print(f"wrote {len(files)} JSON + PNG pairs to {out}/")
        else:
            con.print_json(json.dumps(summary))
        return 0
    except (BackendError, ImageError, ConfigError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
