"""Run artifacts (and the PyTorch reference they came from) over a dataset and score them side by side."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DetectParams
from ..preprocess import preprocess
from ..runtime import BackendError, Detector
from .datasets import DetectionSet, EvalDataset, label_map
from .voc import MetricResult, evaluate_voc

#: ssd.pytorch's evaluation Detect: scores > 0.01, 200 candidates per class (its eval.py and
#: ``Detect(num_classes, 0, 200, 0.01, 0.45)``). NMS IoU and the per-image cap stay the model's.
EVAL_CONF_THRESH = 0.01
EVAL_TOP_K = 200

#: Default ``--max-drop`` in AP points per artifact precision: mmdeploy-like 0.05 for FP32 (only
#: float reassociation differs), 0.5 for reduced precision.
DEFAULT_MAX_DROP = {"fp32": 0.05, "fp16": 0.5, "mixed": 0.5, "int8": 0.5}

Progress = Callable[[int], None]


def eval_params(
    det: Detector, conf_thresh: float | None = None, top_k: int | None = None, nms_thresh: float | None = None
) -> DetectParams:
    """The artifact's Detect settings with the evaluation thresholds (overridable)."""
    return det.params.replace(
        conf_thresh=EVAL_CONF_THRESH if conf_thresh is None else conf_thresh,
        top_k=EVAL_TOP_K if top_k is None else top_k,
        nms_thresh=nms_thresh,
    )


def run_detector(
    det: Detector, dataset: EvalDataset, *, params: DetectParams | None = None, batch: int = 8,
    progress: Progress | None = None,
) -> DetectionSet:  # fmt: skip
    """Detections of ``det`` on every image of ``dataset``, labels mapped into the dataset's numbering."""
    lmap = label_map(det.config.class_names, dataset)
    params = params or eval_params(det)
    parts = []
    recs = dataset.images
    for lo in range(0, len(recs), batch):
        chunk = recs[lo : lo + batch]
        x, sizes = preprocess([r.path for r in chunk], det.config)
        loc, conf = det.infer(x)
        if not (np.isfinite(loc).all() and np.isfinite(conf).all()):
            raise BackendError(
                f"{det.backend.path}: non-finite network outputs on {chunk[0].path} .. {chunk[-1].path}"
            )
        for k, res in enumerate(det.postprocess(loc, conf, sizes, params)):
            labels = lmap[res.class_ids]
            keep = labels >= 0
            n = int(keep.sum())
            parts.append(
                DetectionSet(
                    np.full(n, lo + k, np.int64),
                    labels[keep],
                    res.scores[keep].astype(np.float64),
                    res.boxes[keep].astype(np.float64),
                )
            )
        if progress is not None:
            progress(len(chunk))
    return DetectionSet.concat(parts)


def evaluate(
    dataset: EvalDataset, dets: DetectionSet, metric: str, coco_gt: Any = None, voc_convention: str = "devkit"
) -> MetricResult:
    """Score ``dets`` with ``metric`` (``voc07``, ``voc12`` or ``coco``)."""
    if metric == "coco":
        from .coco import evaluate_coco

        return evaluate_coco(dataset, dets, coco_gt)
    return evaluate_voc(dataset, dets, metric, convention=voc_convention)


def reference_detector(det: Detector, reference: str | os.PathLike[str] | None) -> Detector | None:
    """The PyTorch reference of ``det``: ``"auto"`` rebuilds it from the artifact's metadata (as
    ``ssd-check`` does), a path loads that checkpoint with the artifact's config, ``None``/``"none"``
    means no reference. A PyTorch artifact under ``auto`` is its own reference (``None``)."""
    from ..check import reference_backend
    from ..contract import artifact_kind

    if reference is None or str(reference) == "none":
        return None
    if str(reference) == "auto":
        if det.backend.name == "torch":
            return None
        return Detector(reference_backend(det.backend, None), params=det.params)
    if artifact_kind(reference) == "torch":
        return Detector(reference_backend(det.backend, str(reference)), params=det.params)
    return Detector.load(reference)


def reference_key(ref: Detector) -> str:
    """What makes two references the same run: the weights and the config."""
    return json.dumps([ref.backend.path, ref.config.to_dict()], sort_keys=True, default=str)


@dataclass
class ModelResult:
    """One artifact (or reference) scored on the dataset."""

    name: str
    path: str
    precision: str
    backend: str
    result: MetricResult
    detections: DetectionSet = field(repr=False)
    reference: str | None = None  # the name of its reference entry
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "precision": self.precision,
            "backend": self.backend,
            "reference": self.reference,
            "detections": len(self.detections),
            "seconds": round(self.seconds, 3),
            **self.result.to_dict(),
        }


@dataclass
class Verdict:
    artifact: str
    reference: str
    delta_points: float  # (artifact - reference) mAP in AP points
    max_drop: float

    @property
    def passed(self) -> bool:
        return not (-self.delta_points > self.max_drop)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "reference": self.reference,
            "delta_ap_points": self.delta_points,
            "max_drop": self.max_drop,
            "passed": self.passed,
        }


def verdict(artifact: ModelResult, reference: ModelResult, max_drop: float | None) -> Verdict:
    limit = max_drop if max_drop is not None else DEFAULT_MAX_DROP.get(artifact.precision, 0.5)
    delta = 100.0 * (artifact.result.map - reference.result.map)
    return Verdict(artifact.name, reference.name, float(delta), float(limit))


def unique_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short display names: file names, with parent folders added where two would collide."""
    names = [Path(p).name for p in paths]
    for i, p in enumerate(paths):
        if names.count(names[i]) > 1:
            names[i] = str(Path(p))
    return names
