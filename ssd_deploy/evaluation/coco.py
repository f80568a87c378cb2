"""The COCO metric, computed by pycocotools itself (not a re-implementation).

The ground truth is the annotation file as pycocotools reads it; detections go in as a COCO results
list. Evaluation is restricted to the dataset's images (so ``--limit`` evaluates a subset). The 12
summary numbers are ``COCOeval.stats`` in pycocotools' order; per-class AP is AP@[.5:.95] for area
"all" and 100 detections, from ``COCOeval.eval["precision"]`` (docs/evaluation.md).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from ..errors import optional_import
from .datasets import DetectionSet, EvalDataset, detections_to_json
from .voc import MetricResult

#: Names of ``COCOeval.stats`` in order.
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _pycocotools() -> tuple[Any, Any]:
    optional_import("pycocotools", extra="eval", purpose="the COCO metric")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def load_ground_truth(dataset: EvalDataset) -> Any:
    """pycocotools' ``COCO`` object for the dataset's annotation file (its prints silenced)."""
    COCO, _ = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(dataset.source))


def evaluate_coco(dataset: EvalDataset, dets: DetectionSet, gt: Any = None) -> MetricResult:
    """COCO AP@[.5:.95], AP50, AP75, AP/AR by size and AR@1/10/100 with pycocotools.

    ``gt`` may be a ``COCO`` object loaded once (:func:`load_ground_truth`) and shared by several runs.
    """
    if dataset.kind != "coco":
        raise ValueError("the COCO metric needs a COCO dataset (annotation file)")
    _, COCOeval = _pycocotools()
    gt = gt if gt is not None else load_ground_truth(dataset)
    img_ids = [int(r.image_id) for r in dataset.images]
    keep = dets.image_index < len(dataset.images)
    results = detections_to_json(dets.select(keep), dataset)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes refuses an empty list; no detections score 0, not an error
            dt = type(gt)()
            dt.dataset = {
                "images": gt.dataset["images"],
                "categories": gt.dataset["categories"],
                "annotations": [],
            }
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in ev.stats]
    summary = dict(zip(COCO_STATS, stats))
    prec = ev.eval["precision"]  # [T, R, K, A, M]; K follows params.catIds (sorted)
    per_class: dict[str, float] = {}
    positives: dict[str, int] = {}
    labels = np.concatenate([r.labels[~r.difficult] for r in dataset.images])
    ids, counts = np.unique(labels, return_counts=True)
    n_gt = dict(zip(ids.tolist(), counts.tolist()))
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[dataset.categories[cid]] = float(p.mean()) if p.size else float("nan")
        positives[dataset.categories[cid]] = int(n_gt.get(cid, 0))
    # pycocotools reports -1 where a number is undefined (no ground truth of that size): keep it as NaN
    summary = {k: (v if v >= 0 else float("nan")) for k, v in summary.items()}
    return MetricResult("coco", summary["AP"], per_class, summary, positives)
