"""The PASCAL VOC detection metric, vectorised: AP at IoU >= 0.5, difficult objects ignored.

The rules are the VOC devkit's (``VOCevaldet.m``, ``VOCap``), written down with the places where
ssd.pytorch's ``eval.py`` differs in docs/evaluation.md:

* per class, detections of all images sorted by descending score (stable: ties keep file order);
* each detection is compared with every ground-truth box of its image and class and takes the one of
  highest IoU (the first on ties), matched or not; IoU uses the devkit's inclusive pixel areas
  (``x2 - x1 + 1``);
* IoU >= 0.5: a true positive if that box is not difficult and not yet taken, ignored (neither TP
  nor FP) if it is difficult, a false positive if it was taken; IoU < 0.5: a false positive;
* recall = TP / (non-difficult ground truth); precision = TP / (TP + FP);
* ``voc07``: the mean over t = 0, 0.1, ..., 1 of the highest precision at recall >= t;
  ``voc12`` (VOC2010 on): the area under the precision envelope at every recall change.

Whether a detection is a true positive depends only on whether an earlier detection took the same
box, so the greedy pass reduces to "first detection per box in score order" (``np.unique``): no
Python loop over detections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .datasets import DetectionSet, EvalDataset

VOC_METRICS = ("voc07", "voc12")
METRIC_TITLES = {
    "voc07": "VOC07 11-point AP at IoU 0.5 (difficult objects ignored)",
    "voc12": "VOC2010+ all-point AP at IoU 0.5 (difficult objects ignored)",
    "coco": "COCO AP@[.5:.95] (pycocotools)",
}
#: Elements of one IoU block (detections x ground-truth boxes) computed at once; bounds memory.
_BLOCK = 1 << 21


@dataclass
class MetricResult:
    """mAP, AP per class and (COCO) the other summary numbers, all as fractions (0..1)."""

    metric: str
    map: float
    per_class: dict[str, float]  # class name -> AP (NaN: no ground truth of that class)
    summary: dict[str, float] = field(default_factory=dict)
    positives: dict[str, int] = field(default_factory=dict)
    convention: str | None = None  # VOC only: "devkit" or "ssd.pytorch"

    @property
    def title(self) -> str:
        if self.convention == "ssd.pytorch":
            return METRIC_TITLES[self.metric] + ", ssd.pytorch eval.py convention"
        return METRIC_TITLES[self.metric]

    def to_dict(self) -> dict[str, Any]:
        def nan_to_none(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "metric": self.metric,
            "convention": self.convention,
            "title": self.title,
            "mAP": nan_to_none(self.map),
            "per_class": {k: nan_to_none(v) for k, v in self.per_class.items()},
            "summary": {k: nan_to_none(v) for k, v in self.summary.items()},
            "positives": self.positives,
        }


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    """AP from the cumulative recall/precision of the score-sorted detections (VOC devkit rules)."""
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if metric == "voc07":
        # k / 10 is exactly rounded; np.arange(0, 1.1, 0.1) gives 0.30000000000000004 and would miss
        # a recall of exactly 0.3 (docs/evaluation.md).
        t = np.arange(11) / 10.0
        ok = rec[None, :] >= t[:, None]  # [11, N]
        best = np.where(ok, prec[None, :], -np.inf).max(axis=1, initial=-np.inf)
        return float(np.where(np.isfinite(best), best, 0.0).sum() / 11.0)
    if metric == "voc12":
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
        i = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    raise ValueError(f"unknown VOC metric {metric!r}; expected one of {', '.join(VOC_METRICS)}")


#: ``devkit``: the official VOC devkit's rules (the default). ``ssd.pytorch``: its ``eval.py``'s, to
#: reproduce its published figures (docs/evaluation.md lists the differences).
VOC_CONVENTIONS = ("devkit", "ssd.pytorch")


def _iou_devkit(a: np.ndarray, b: np.ndarray, one: float = 1.0) -> np.ndarray:
    """IoU of ``a [..., 4]`` and ``b [..., 4]`` (broadcast), inclusive pixel areas as the devkit
    (``one=0``: continuous areas, as ssd.pytorch's eval.py)."""
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
    area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
    union = area_a + area_b - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_class(
    det_image: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
    gt_image: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray,
    iou_thresh: float = 0.5, convention: str = "devkit",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One class: ``(order, tp, fp)`` where ``order`` sorts the detections by descending score
    (stable) and ``tp``/``fp`` are 0/1 per sorted detection (both 0: matched a difficult box).
    Boxes in the devkit frame."""
    devkit = convention == "devkit"
    # ssd.pytorch: np.argsort(-confidence) with numpy's default (unstable) sort, as its eval.py
    order = np.argsort(-det_scores, kind="stable" if devkit else None)
    n = order.size
    tp = np.zeros(n, np.float64)
    fp = np.ones(n, np.float64)
    if n == 0 or gt_image.size == 0:
        return order, tp, fp
    img = det_image[order]
    boxes = det_boxes[order]
    g_order = np.argsort(gt_image, kind="stable")
    g_img, g_box, g_diff = gt_image[g_order], gt_boxes[g_order], gt_difficult[g_order]
    n_images = int(max(img.max(), g_img.max())) + 1
    count = np.bincount(g_img, minlength=n_images)
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    per_det = count[img]
    width = int(per_det.max()) if n else 0
    best_iou = np.zeros(n)
    best_gt = np.full(n, -1, np.int64)
    if width:
        cols = np.arange(width)
        step = max(1, _BLOCK // width)
        for lo in range(0, n, step):  # blocks bound memory; each block is vectorised
            hi = min(n, lo + step)
            valid = cols[None, :] < per_det[lo:hi, None]
            gidx = np.where(valid, start[img[lo:hi], None] + cols[None, :], 0)
            iou = np.where(
                valid, _iou_devkit(boxes[lo:hi, None, :], g_box[gidx], 1.0 if devkit else 0.0), -1.0
            )
            j = iou.argmax(axis=1)  # first maximum, as the devkit's strict ">" scan
            best_iou[lo:hi] = iou[np.arange(hi - lo), j]
            best_gt[lo:hi] = np.where(per_det[lo:hi] > 0, gidx[np.arange(hi - lo), j], -1)
    hit = (best_gt >= 0) & ((best_iou >= iou_thresh) if devkit else (best_iou > iou_thresh))
    diff_hit = hit & g_diff[np.maximum(best_gt, 0)]
    cand = np.flatnonzero(hit & ~diff_hit)
    _, first = np.unique(best_gt[cand], return_index=True)  # the first detection to claim each box
    tp[cand[first]] = 1.0
    fp[:] = 1.0 - tp
    fp[diff_hit] = 0.0
    return order, tp, fp


def evaluate_voc(
    dataset: EvalDataset, dets: DetectionSet, metric: str = "voc07", iou_thresh: float = 0.5,
    convention: str = "devkit",
) -> MetricResult:  # fmt: skip
    """VOC AP per class and their mean over the classes that have non-difficult ground truth.

    ``dets`` boxes are in the model frame (image pixels) and are moved into the devkit frame by +1
    (docs/evaluation.md, "Coordinates"). ``convention="ssd.pytorch"`` applies that eval.py's
    differences instead (ground truth - 1, results-file rounding, continuous IoU, IoU > 0.5)."""
    if metric not in VOC_METRICS:
        raise ValueError(f"unknown VOC metric {metric!r}; expected one of {', '.join(VOC_METRICS)}")
    if convention not in VOC_CONVENTIONS:
        raise ValueError(
            f"unknown VOC convention {convention!r}; expected one of {', '.join(VOC_CONVENTIONS)}"
        )
    recs = dataset.images
    counts = np.array([len(r.labels) for r in recs], dtype=np.int64)
    gt_image = np.repeat(np.arange(len(recs), dtype=np.int64), counts)
    gt_boxes = np.concatenate([r.boxes for r in recs]) if recs else np.zeros((0, 4))
    gt_labels = np.concatenate([r.labels for r in recs]) if recs else np.zeros(0, np.int64)
    gt_diff = np.concatenate([r.difficult for r in recs]) if recs else np.zeros(0, bool)
    keep = dets.image_index < len(recs)
    d_img, d_lab, d_sc, d_box = (
        dets.image_index[keep],
        dets.labels[keep],
        dets.scores[keep],
        dets.boxes[keep] + 1.0,
    )
    if convention == "ssd.pytorch":
        gt_boxes = gt_boxes - 1.0  # its parse_rec: int(xml) - 1
        d_box = np.round(d_box, 1)  # its results file: "{:.3f} {:.1f} {:.1f} {:.1f} {:.1f}"
        d_sc = np.round(d_sc, 3)
    per_class: dict[str, float] = {}
    positives: dict[str, int] = {}
    d_sort = np.argsort(d_lab, kind="stable")
    g_sort = np.argsort(gt_labels, kind="stable")
    for label, name in dataset.categories.items():
        ds = d_sort[
            np.searchsorted(d_lab[d_sort], label, "left") : np.searchsorted(d_lab[d_sort], label, "right")
        ]
        gs = g_sort[
            np.searchsorted(gt_labels[g_sort], label, "left") : np.searchsorted(
                gt_labels[g_sort], label, "right"
            )
        ]
        npos = int((~gt_diff[gs]).sum())
        positives[name] = npos
        if npos == 0:
            per_class[name] = float("nan")  # undefined; left out of the mean (docs/evaluation.md)
            continue
        _, tp, fp = match_class(
            d_img[ds], d_sc[ds], d_box[ds], gt_image[gs], gt_boxes[gs], gt_diff[gs], iou_thresh, convention
        )
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        rec = tp_c / npos
        prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        per_class[name] = voc_ap(rec, prec, metric) if ds.size else 0.0
    defined = [v for v in per_class.values() if not math.isnan(v)]
    m = float(np.mean(defined)) if defined else float("nan")
    res = MetricResult(metric, m, per_class, {"mAP": m}, positives)
    res.convention = convention
    return res
