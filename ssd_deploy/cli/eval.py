"""``ssd-eval``: mAP of artifacts on VOC or COCO data, side by side with their PyTorch reference.

Every input (dataset layout, annotation files, every listed image, artifacts, a detections file,
output paths) is checked before any model runs; outputs are written atomically at the end.
Exit 0: evaluated and every artifact within ``--max-drop`` of its reference; 1: some artifact
dropped more; 2: bad input; 130: interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..contract import artifact_kind, describe_suffixes
from ..errors import EXIT_CHECK_FAILED, EXIT_OK, InputError, one_line
from . import common


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-eval", "mAP of SSD artifacts on VOC or COCO data, side by side with the PyTorch reference."
    )
    common.add_engine(p, multiple=True, required=False)
    p.add_argument(
        "--detections",
        type=common.existing_file,
        default=None,
        metavar="FILE",
        help="evaluate this COCO-format results file instead of running a model",
    )
    p.add_argument(
        "--dataset",
        required=True,
        metavar="KIND:PATH",
        help="voc:VOCdevkit/VOC2007[:test] or coco:ANNOTATIONS.json:IMAGE_DIR",
    )
    p.add_argument(
        "--metric",
        choices=("voc07", "voc12", "coco"),
        default=None,
        help="default: voc07 for VOC2007, voc12 for other VOC years, coco for COCO",
    )
    p.add_argument(
        "--voc-convention",
        choices=("devkit", "ssd.pytorch"),
        default="devkit",
        help="VOC rules: the official devkit's, or ssd.pytorch eval.py's (to reproduce its "
        "published figures; docs/evaluation.md)",
    )
    p.add_argument(
        "--reference",
        default="auto",
        metavar="PATH|auto|none",
        help="PyTorch reference: 'auto' rebuilds it from the artifact's metadata, a .pth "
        "checkpoint, or 'none'",
    )
    p.add_argument(
        "--max-drop",
        type=common.finite_float,
        default=None,
        metavar="AP",
        help="fail (exit 1) when an artifact's mAP is more than this many AP points below its "
        "reference (default: 0.05 for FP32, 0.5 for FP16/INT8)",
    )
    p.add_argument(
        "--limit", type=common.positive_int, default=None, metavar="N", help="only the first N images"
    )
    p.add_argument("--batch", type=common.positive_int, default=8, help="images per inference batch")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON here")
    p.add_argument(
        "--save-detections",
        default=None,
        metavar="FILE",
        help="write each artifact's detections as a COCO results file (several artifacts: "
        "FILE's stem + '.<artifact>' + .json)",
    )
    p.add_argument(
        "--gallery",
        default=None,
        metavar="DIR",
        help="write side-by-side PNGs of the images where artifact and reference disagree most, "
        "and an index.html, into this new or empty folder",
    )
    p.add_argument(
        "--gallery-size", type=common.positive_int, default=20, help="images per artifact in the gallery"
    )
    p.add_argument(
        "--gallery-min-score",
        type=common.unit_interval,
        default=0.3,
        help="detections drawn and compared in the gallery score at least this",
    )
    p.add_argument(
        "--conf-thresh",
        type=common.unit_interval,
        default=None,
        help="Detect score threshold (default: 0.01, ssd.pytorch's evaluation setting)",
    )
    p.add_argument(
        "--top-k",
        type=common.positive_int,
        default=None,
        help="Detect candidates per class (default: 200, ssd.pytorch's evaluation setting)",
    )
    common.add_device(p)
    return p


def _save_paths(base: str, names: Sequence[str]) -> list[Path]:
    out = Path(base)
    if len(names) == 1:
        return [out]
    return [out.with_name(f"{out.stem}.{Path(n).stem}{out.suffix or '.json'}") for n in names]


def _validate(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that can be checked without running a model; raises InputError."""
    from ..evaluation.datasets import load_dataset, read_detections

    engines = list(args.engine or [])
    if not engines and args.detections is None:
        raise InputError("give --engine ARTIFACT (repeatable) or --detections FILE")
    if engines and args.detections is not None:
        raise InputError("--engine and --detections are alternatives; give one of them")
    for e in engines:
        if not Path(e).is_file():
            raise InputError(f"{e}: no such artifact file")
        if artifact_kind(e) is None:
            raise InputError(f"{e}: unknown artifact type; expected {describe_suffixes()}")
    ref = args.reference
    if ref not in ("auto", "none"):
        if not Path(ref).is_file():
            raise InputError(f"--reference {ref}: no such file")
        if artifact_kind(ref) is None:
            raise InputError(f"--reference {ref}: unknown artifact type; expected {describe_suffixes()}")
    if args.max_drop is not None and args.max_drop < 0:
        raise InputError(f"--max-drop {args.max_drop}: must be >= 0")
    dataset = load_dataset(args.dataset).limit(args.limit)
    metric = args.metric or dataset.default_metric
    if metric == "coco" and dataset.kind != "coco":
        raise InputError(
            f"--metric coco needs a COCO dataset (coco:ANNOTATIONS.json:IMAGE_DIR), got {args.dataset}"
        )
    if metric != "coco" and dataset.kind != "voc":
        raise InputError(f"--metric {metric} needs a VOC dataset (voc:ROOT[:SPLIT]); use --metric coco")
    if metric == "coco":
        from ..errors import optional_import

        optional_import("pycocotools", extra="eval", purpose="the COCO metric")
    for opt in ("json",):
        if getattr(args, opt):
            common.output_file(getattr(args, opt), suffixes=(".json",))
    saves: list[Path] = []
    if args.save_detections:
        if not engines:
            raise InputError("--save-detections needs --engine (a detections file is already saved)")
        saves = _save_paths(args.save_detections, engines)
        for s in saves:
            common.output_file(s, suffixes=(".json",))
    if args.gallery:
        from ..evaluation.gallery import gallery_problem

        if not engines or ref == "none":
            raise InputError(
                "--gallery compares artifacts with their reference: needs --engine and a --reference"
            )
        problem = gallery_problem(args.gallery)
        if problem:
            raise InputError(problem)
    detections = read_detections(args.detections, dataset) if args.detections is not None else None
    return {
        "dataset": dataset,
        "metric": metric,
        "engines": engines,
        "saves": saves,
        "detections": detections,
    }


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..evaluation.datasets import write_detections
    from ..evaluation.runner import evaluate

    t0 = time.perf_counter()
    v = _validate(args)
    dataset, metric = v["dataset"], v["metric"]
    con = Console(highlight=False)
    con.print(dataset.describe())
    coco_gt = None
    if metric == "coco":
        from ..evaluation.coco import load_ground_truth

        coco_gt = load_ground_truth(dataset)
    if v["detections"] is not None:
        from ..evaluation.runner import ModelResult

        dets = v["detections"]
        res = ModelResult(
            Path(args.detections).name,
            str(args.detections),
            "file",
            "file",
            evaluate(dataset, dets, metric, coco_gt, args.voc_convention),
            dets,
        )
        report = {"dataset": dataset.describe(), "metric": metric, "models": [res], "verdicts": []}
    else:
        report = _run_models(args, v, con, coco_gt)
    _print(con, report, metric)
    con.print(f"{len(dataset)} images, {time.perf_counter() - t0:.1f} s")
    if args.json:
        from ..fileio import atomic_write

        out = {
            "dataset": report["dataset"],
            "metric": metric,
            "models": [m.to_dict() for m in report["models"]],
            "verdicts": [x.to_dict() for x in report["verdicts"]],
            "passed": all(x.passed for x in report["verdicts"]),
        }
        atomic_write(args.json, json.dumps(out, indent=1).encode())
    by_name = {m.name: m for m in report["models"]}
    for path, name in zip(v["saves"], report.get("artifacts", [])):
        write_detections(path, by_name[name].detections, dataset)
        con.print(f"wrote {path}")
    if args.gallery:
        from ..evaluation.gallery import write_gallery

        pairs = [
            (
                by_name[x.artifact].name,
                by_name[x.artifact].detections,
                x.reference,
                by_name[x.reference].detections,
            )
            for x in report["verdicts"]
        ]
        write_gallery(args.gallery, dataset, pairs, top=args.gallery_size, min_score=args.gallery_min_score)
        con.print(f"wrote the mismatch gallery to {args.gallery}/index.html")
    return EXIT_OK if all(x.passed for x in report["verdicts"]) else EXIT_CHECK_FAILED


def _run_models(args: argparse.Namespace, v: dict[str, Any], con: Any, coco_gt: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..evaluation.datasets import label_map
    from ..evaluation.runner import (
        ModelResult,
        eval_params,
        evaluate,
        reference_detector,
        reference_key,
        run_detector,
        unique_names,
        verdict,
    )
    from ..runtime import BackendError, Detector

    dataset, metric = v["dataset"], v["metric"]
    names = unique_names(v["engines"])
    models: list[ModelResult] = []
    artifacts: list[str] = []
    refs: dict[str, str] = {}  # reference key -> its entry's name
    verdicts = []
    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console_stderr(),
        transient=True,
    )

    def score(det: Any, name: str, path: str) -> ModelResult:
        task = prog.add_task(name, total=len(dataset))
        t = time.perf_counter()
        params = eval_params(det, args.conf_thresh, args.top_k)
        dets = run_detector(
            det, dataset, params=params, batch=args.batch, progress=lambda n: prog.advance(task, n)
        )
        prog.remove_task(task)
        scored = evaluate(dataset, dets, metric, coco_gt, args.voc_convention)
        return ModelResult(
            name, path, det.backend.precision, det.backend.name, scored, dets, seconds=time.perf_counter() - t
        )

    with contextlib.ExitStack() as stack:
        # Open every artifact and resolve every reference first: a reference that cannot be built is
        # bad input to report before any model has run.
        opened = []
        ref_dets: dict[str, Any] = {}  # reference key -> its Detector (one run per distinct reference)
        for path, name in zip(v["engines"], names):
            kind = artifact_kind(path)
            opts = {"device": args.device} if kind == "onnx" and args.device != "auto" else {}
            det = Detector.load(path, **opts)
            stack.callback(det.close)
            label_map(det.config.class_names, dataset)  # no class in common: bad input, before any run
            try:
                ref = reference_detector(det, args.reference)
            except BackendError as e:
                raise BackendError(one_line(e).replace("--weights", "--reference")) from None
            key = None
            if ref is not None:
                key = reference_key(ref)
                if key in ref_dets:
                    ref.close()
                else:
                    stack.callback(ref.close)
                    ref_dets[key] = ref
            opened.append((path, name, det, key))
        with prog:
            for key, ref in ref_dets.items():
                refs[key] = f"reference ({Path(ref.backend.path).name})"
                models.append(score(ref, refs[key], ref.backend.path))
            for path, name, det, key in opened:
                res = score(det, name, path)
                models.append(res)
                artifacts.append(name)
                if key is not None:
                    res.reference = refs[key]
                    ref_entry = next(m for m in models if m.name == refs[key])
                    verdicts.append(verdict(res, ref_entry, args.max_drop))
    return {
        "dataset": dataset.describe(),
        "metric": metric,
        "models": models,
        "verdicts": verdicts,
        "artifacts": artifacts,
    }


def Console_stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.2f}"


def _print(con: Any, report: dict[str, Any], metric: str) -> None:
    from rich.table import Table

    models = report["models"]
    by_name = {m.name: m for m in models}
    t = Table(title="AP in points (x100)")
    t.add_column("class")
    t.add_column("GT", justify="right")
    for m in models:
        t.add_column(f"{m.name}\n{m.precision}", justify="right")
        if m.reference is not None:
            t.add_column("Δ", justify="right")
    first = models[0].result
    for cls in first.per_class:
        row = [cls, str(first.positives.get(cls, ""))]
        for m in models:
            ap = m.result.per_class[cls]
            row.append(_fmt(ap))
            if m.reference is not None:
                r = by_name[m.reference].result.per_class[cls]
                row.append("-" if math.isnan(ap) or math.isnan(r) else f"{100 * (ap - r):+.2f}")
        t.add_row(*row)
    t.add_section()
    keys = ["mAP"] if metric != "coco" else list(first.summary)
    for key in keys:
        row = [f"[bold]{key}[/bold]", ""]
        for m in models:
            val = m.result.map if key == "mAP" else m.result.summary[key]
            row.append(f"[bold]{_fmt(val)}[/bold]" if key in ("mAP", "AP") else _fmt(val))
            if m.reference is not None:
                r = by_name[m.reference].result
                rv = r.map if key == "mAP" else r.summary[key]
                row.append("-" if math.isnan(val) or math.isnan(rv) else f"{100 * (val - rv):+.2f}")
        t.add_row(*row)
    con.print(t)
    con.print(f"metric: {models[0].result.title}")
    for x in report["verdicts"]:
        state = "[green]ok[/green]" if x.passed else "[red]FAIL[/red]"
        con.print(
            f"{x.artifact} vs {x.reference}: {x.delta_points:+.4f} AP points (max drop {x.max_drop}) {state}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, execute, argv)


if __name__ == "__main__":
    raise SystemExit(main())
