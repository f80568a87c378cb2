"""Metric time (no inference): 5,000 images x 200 detections, ours against pycocotools' own runtime.

    python benchmarks/bench_eval_metric.py [--images 5000] [--per-image 200] [--rounds 2] [--out FILE.md]

Synthetic data (seeded): 1-6 ground-truth boxes per image in 20 classes (10 % difficult / crowd),
and ``--per-image`` detections per image: half of them jittered copies of the ground truth (so
matching does real work), half random boxes, random scores and classes. Timed, interleaved in
each round on the same data:

* ``ours voc07`` / ``ours voc12``: :func:`ssd_deploy.evaluation.voc.evaluate_voc` (vectorised numpy);
* ``pycocotools``: pycocotools alone, as its users run it: ``loadRes`` of the results list (the same
  detections), ``COCOeval(..., "bbox")``, ``evaluate()``, ``accumulate()``, ``summarize()``;
* ``ours coco``: :func:`ssd_deploy.evaluation.coco.evaluate_coco` (the same pycocotools calls plus
  our conversion to the results list and the per-class table).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The imports below need ROOT on sys.path (the script runs from a checkout, not installed).
from ssd_deploy.config import VOC_CLASSES  # noqa: E402
from ssd_deploy.evaluation.datasets import DetectionSet, EvalDataset, ImageRecord  # noqa: E402
from ssd_deploy.evaluation.voc import evaluate_voc  # noqa: E402


def make_data(n_img: int, per: int, seed: int = 0) -> tuple[list[ImageRecord], DetectionSet]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_img):
        k = int(rng.integers(1, 7))
        xy = rng.uniform(0, 350, (k, 2)).round()
        wh = rng.uniform(16, 150, (k, 2)).round()
        images.append(
            ImageRecord(
                i + 1,
                Path(f"{i + 1}.jpg"),
                500,
                500,
                np.concatenate([xy, xy + wh], 1),
                rng.integers(1, 21, k),
                rng.random(k) < 0.1,
            )
        )
    img_idx, labels, boxes = [], [], []
    for i, rec in enumerate(images):
        n_copy = per // 2
        src = rng.integers(0, len(rec.labels), n_copy)
        b = rec.boxes[src] + rng.normal(0, 8, (n_copy, 4))
        lab = np.where(rng.random(n_copy) < 0.8, rec.labels[src], rng.integers(1, 21, n_copy))
        xy = rng.uniform(0, 400, (per - n_copy, 2))
        rb = np.concatenate([xy, xy + rng.uniform(8, 100, (per - n_copy, 2))], 1)
        img_idx.append(np.full(per, i))
        labels.append(np.concatenate([lab, rng.integers(1, 21, per - n_copy)]))
        bb = np.concatenate([b, rb])
        bb[:, 2:] = np.maximum(bb[:, 2:], bb[:, :2] + 1)
        boxes.append(bb)
    n = n_img * per
    return images, DetectionSet(
        np.concatenate(img_idx), np.concatenate(labels), rng.random(n).round(6), np.concatenate(boxes)
    )


def coco_gt(images: list[ImageRecord], path: Path) -> None:
    anns = []
    for rec in images:
        for b, lab, crowd in zip(rec.boxes, rec.labels, rec.difficult):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": rec.image_id,
                    "category_id": int(lab),
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": r.image_id, "file_name": f"{r.image_id}.jpg", "width": 500, "height": 500}
                    for r in images
                ],
                "annotations": anns,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--per-image", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/eval_metric.md"))
    args = ap.parse_args()

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ssd_deploy.evaluation.coco import evaluate_coco
    from ssd_deploy.evaluation.datasets import detections_to_json

    t = time.perf_counter()
    images, dets = make_data(args.images, args.per_image)
    print(f"data: {len(images)} images, {len(dets)} detections ({time.perf_counter() - t:.1f} s to make)")
    tmp = Path(tempfile.mkdtemp())
    coco_gt(images, tmp / "gt.json")
    cats = {i + 1: n for i, n in enumerate(VOC_CLASSES)}
    voc_ds = EvalDataset("voc", Path("VOC2007"), images, cats)
    coco_ds = EvalDataset("coco", tmp / "gt.json", images, cats)
    results_list = detections_to_json(dets, coco_ds)  # the same detections, as pycocotools users hold them
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp / "gt.json"))

    def pycoco() -> float:
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(results_list), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[0])

    def pycoco_ap50() -> float:
        # the closest pycocotools gets to the VOC metric's amount of work: one IoU threshold, one area
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(results_list), "bbox")
            ev.params.iouThrs = np.array([0.5])
            ev.params.areaRng, ev.params.areaRngLbl = [ev.params.areaRng[0]], ["all"]
            ev.evaluate()
            ev.accumulate()
        p = ev.eval["precision"][0, :, :, 0, -1]
        per_class = [p[:, k][p[:, k] > -1].mean() for k in range(p.shape[1]) if (p[:, k] > -1).any()]
        return float(np.mean(per_class))

    variants = {
        "ours voc07": lambda: evaluate_voc(voc_ds, dets, "voc07").map,
        "ours voc12": lambda: evaluate_voc(voc_ds, dets, "voc12").map,
        "pycocotools": pycoco,
        "pycocotools AP50": pycoco_ap50,
        "ours coco": lambda: evaluate_coco(coco_ds, dets, gt).map,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    values: dict[str, float] = {}
    names = list(variants)
    print("variants:", ", ".join(names), flush=True)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
            t = time.perf_counter()
            values[name] = variants[name]()
            times[name].append(time.perf_counter() - t)
            print(f"round {r + 1}: {name:12s} {times[name][-1]:7.2f} s  value {values[name]:.4f}", flush=True)
    base = min(times["pycocotools"])
    rows = "\n".join(
        f"| {k} | {min(v):.2f} | {np.median(v):.2f} | {min(v) / base:.3f} | {values[k]:.4f} |"
        for k, v in times.items()
    )
    n_gt = sum(len(r.labels) for r in images)
    text = f"""# Metric time: {args.images:,} images x {args.per_image} detections (no inference)

`python benchmarks/bench_eval_metric.py --images {args.images} --per-image {args.per_image} \
--rounds {args.rounds}`

{len(dets):,} detections, {n_gt:,} ground-truth boxes in 20 classes (10 % difficult / crowd); half the
detections are jittered ground truth, half random (benchmarks/bench_eval_metric.py).
Variants interleaved in each round, order rotated per round, same data.

| variant | best s | median s | / pycocotools | value (mAP or AP) |
|---|---|---|---|---|
{rows}

* `ours voc07/voc12`: `ssd_deploy.evaluation.voc.evaluate_voc` (the VOC metric, AP@0.5).
* `pycocotools`: pycocotools {metadata.version("pycocotools")} by itself: `loadRes` + `evaluate` +
  `accumulate` + `summarize` (AP@[.5:.95], 10 IoU thresholds,
  3 area ranges, so more work than one AP@0.5: the ratio compares runtimes, not like for like).
* `pycocotools AP50`: pycocotools with one IoU threshold (0.5) and one area range, `evaluate` +
  `accumulate`: about the VOC metric's amount of work, though still COCO's rules (101-point
  interpolation, at most 100 detections per image, crowd handling), so its value differs from VOC's.
* `ours coco`: `evaluate_coco`, i.e. the same pycocotools calls plus the results-list conversion;
  its difference from `pycocotools` is noise of the shared machine, not a speed-up.

Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, numpy
{np.__version__}; **the machine was shared with other jobs** (load average well above the core
count while this ran), so absolute seconds are noisy; the ratios come from interleaved runs.
"""
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
