"""``ssd-check``: does an artifact (ONNX, FP16/INT8 ONNX, TensorRT plan) agree with PyTorch?

Both sides see the same preprocessed batch. Raw heads are compared element-wise; detections are
compared as matched sets (per class, greedy by score, IoU >= 0.5) because the order of equal scores
is not defined (docs/ssd.md ("Detect")). The reference side is the eager PyTorch model followed by the
PyTorch reference Detect; the artifact side is the artifact followed by the runtime's numpy Detect,
so the check covers the whole deployed path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .contract import WEIGHTS_KEY
from .errors import InputError
from .ops.boxes import box_iou
from .preprocess import preprocess
from .runtime import Backend, BackendError, Detector

#: What "agrees with PyTorch" means per precision. Head errors are max |artifact - torch| over the
#: batch; detection agreement counts detections scoring >= min_score on either side, paired per
#: class greedily at IoU >= 0.5. ``score_delta`` and ``box_px`` limit the 95th percentile over the
#: matched pairs, ``box_px`` in pixels of the S x S network input so the limit does not depend on
#: the photos' sizes (deltas in original-image pixels are reported too). Percentiles, because when
#: a near-tie makes NMS keep a neighbouring box instead, the pair is two different priors and its
#: delta measures the neighbour's distance, not numeric error, so the max (reported too) is
#: dominated by those flips: with random weights, ~1600 overlapping detections per image, FP16's
#: max box delta was 51 image px while its p95 was 0.03.
#: fp32: only float reassociation differs. fp16: 10-bit mantissa, ~1e-3 relative per op across
#: ~20 layers. int8: 8-bit activations, a few percent per layer; detections must still mostly match.
#: fp16 and int8 limits are ~1.5-5x what was measured on the 8 sample photos with the seeded SSD300
#: (ssd_deploy.quantize defaults, docs/precision.md): fp16 loc 0.0037, conf 0.00093, recall/precision
#: 0.997; int8 (percentile, TensorRT graph) loc 0.59-0.69, conf 0.089-0.096, recall/precision
#: 0.89-0.91.
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {
        "loc_max": 1e-3,
        "conf_max": 1e-4,
        "recall": 0.99,
        "precision": 0.99,
        "score_delta": 1e-3,
        "box_px": 0.1,
    },
    "fp16": {
        "loc_max": 2e-2,
        "conf_max": 5e-3,
        "recall": 0.98,
        "precision": 0.98,
        "score_delta": 5e-3,
        "box_px": 0.5,
    },
    # box_px: 3 % of a 300 input
    "int8": {
        "loc_max": 1.0,
        "conf_max": 0.15,
        "recall": 0.85,
        "precision": 0.85,
        "score_delta": 0.08,
        "box_px": 9.0,
    },
}
THRESHOLDS["mixed"] = THRESHOLDS["fp16"]
#: bf16 (OpenVINO's BF16 inference hint on an FP32 graph): 8 significant bits instead of fp16's 11,
#: so ~8x fp16's rounding per op. Measured on the 8 sample photos with the seeded SSD300
#: (docs/precision.md, "OpenVINO"): loc 0.046, conf 0.013, score p95 0.004, box p95 0.15 px,
#: recall/precision 0.978-0.979 (near-tie NMS flips among ~1600 overlapping random-weight boxes).
#: Limits ~2-3x those, recall/precision like fp16's with the flips' margin.
THRESHOLDS["bf16"] = {
    "loc_max": 0.15,
    "conf_max": 0.04,
    "recall": 0.95,
    "precision": 0.95,
    "score_delta": 0.012,
    "box_px": 0.5,
}


@dataclass
class ClassMatch:
    matched: int = 0
    missing: int = 0  # in the reference, not in the artifact
    extra: int = 0  # in the artifact, not in the reference
    score_deltas: list[float] = field(default_factory=list)
    box_deltas_px: list[float] = field(default_factory=list)  # original-image pixels
    box_deltas_input_px: list[float] = field(default_factory=list)  # pixels of the S x S network input


def match_detections(
    ref_boxes: np.ndarray, ref_scores: np.ndarray, got_boxes: np.ndarray, got_scores: np.ndarray,
    iou_thresh: float = 0.5,
) -> tuple[int, int, int, np.ndarray, np.ndarray]:  # fmt: skip
    """Greedy one-to-one matching of one class's detections (boxes in pixels).

    Returns ``(matched, missing, extra, score_deltas, box_deltas)`` where ``box_deltas`` is
    ``[matched, 4]``: the absolute difference of each corner coordinate of a matched pair.
    """
    n_ref, n_got = len(ref_scores), len(got_scores)
    if n_ref == 0 or n_got == 0:
        return 0, n_ref, n_got, np.zeros(0), np.zeros((0, 4))
    iou = box_iou(got_boxes, ref_boxes)  # [G, R]
    order = np.argsort(-got_scores, kind="stable")
    taken = np.zeros(n_ref, dtype=bool)
    pairs = []
    for g in order:  # a check tool, not the hot path: at most a few hundred detections per class
        cand = np.where(taken, -1.0, iou[g])
        r = int(np.argmax(cand))
        if cand[r] >= iou_thresh:
            taken[r] = True
            pairs.append((g, r))
    if not pairs:
        return 0, n_ref, n_got, np.zeros(0), np.zeros((0, 4))
    gi, ri = (np.array(v) for v in zip(*pairs))
    sd = np.abs(got_scores[gi] - ref_scores[ri])
    bd = np.abs(got_boxes[gi] - ref_boxes[ri])
    return len(pairs), n_ref - len(pairs), n_got - len(pairs), sd, bd


@dataclass
class CheckReport:
    artifact: str
    reference: str
    precision: str
    images: list[str]
    min_score: float
    input_size: int
    heads: dict[str, dict[str, float]]
    detections: dict[str, float]
    thresholds: dict[str, float]
    failures: list[str]
    seconds: float
    #: Things a user should know that do not fail the check (e.g. the artifact's semantics differ
    #: from what the checkpoint's format implies).
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _spread(name: str, values: list[float]) -> dict[str, float]:
    """max, mean and 95th percentile of a list of deltas (zeros when empty)."""
    if not values:
        return {f"max_{name}": 0.0, f"mean_{name}": 0.0, f"p95_{name}": 0.0}
    arr = np.asarray(values)
    return {
        f"max_{name}": float(arr.max()),
        f"mean_{name}": float(arr.mean()),
        f"p95_{name}": float(np.percentile(arr, 95)),
    }


def reference_backend(artifact: Backend, weights: str | None) -> Backend:
    """The PyTorch model the artifact was exported from (or ``weights`` if given)."""
    from .runtime.pytorch import TorchBackend

    if weights is not None:
        return TorchBackend(weights, config=artifact.config)
    meta = getattr(artifact, "metadata", {}) or {}
    try:
        info = json.loads(meta.get(WEIGHTS_KEY, "{}"))
    except json.JSONDecodeError:
        info = {}
    if info.get("source") == "seeded-init":
        return TorchBackend(None, config=artifact.config, seed=int(info.get("seed", 0)))
    if info.get("source") == "checkpoint" and Path(info.get("path", "")).is_file():
        return TorchBackend(info["path"], config=artifact.config)
    raise BackendError(
        f"{artifact.path}: cannot tell which weights it was exported from; pass --weights CHECKPOINT"
    )


def _reference_detections(
    loc: np.ndarray, conf: np.ndarray, det: Detector, sizes: Sequence[tuple[int, int]]
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per image, per class (index = class id): (boxes in pixels, scores) from the torch reference."""
    import torch

    from .model.detect import detect_reference

    out = detect_reference(
        torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(det.priors),
        det.variances, det.params,
    ).numpy()  # fmt: skip
    result = []
    for b, (w, h) in enumerate(sizes):
        scale = np.array([w, h, w, h], dtype=np.float64)
        per_class = []
        for c in range(out.shape[1]):
            rows = out[b, c]
            rows = rows[rows[:, 0] > 0]
            per_class.append((rows[:, 1:] * scale, rows[:, 0].astype(np.float64)))
        result.append(per_class)
    return result


def _semantics_notes(artifact: Any, checkpoint: Any) -> list[str]:
    """Where the artifact's config differs from what its checkpoint's format implies
    (docs/checkpoints.md): the check compares like with like, so it still passes, but the artifact
    will not reproduce the checkpoint's own library (e.g. exported before torchvision's rules)."""
    if checkpoint is None:
        return []
    fields = (("Detect", "detect"), ("priors", "prior"), ("mean", "mean"), ("channel order", "channel_order"),
              ("class names", "class_names"))  # fmt: skip
    differ = [label for label, attr in fields if getattr(artifact, attr) != getattr(checkpoint, attr)]
    if not differ:
        return []
    note = (
        f"the artifact's {', '.join(differ)} differ from what the checkpoint's format implies; "
        "re-export it to get that format's semantics (docs/checkpoints.md)"
    )
    return [note]


def check_artifact(
    engine: str | Path,
    *,
    weights: str | None = None,
    images: Sequence[str | Path] | None = None,
    min_score: float = 0.1,
    batch: int = 4,
    thresholds: dict[str, float] | None = None,
    progress: Any = None,
    backend_options: dict[str, Any] | None = None,
) -> CheckReport:
    """Compare ``engine`` with the PyTorch reference on ``images`` (default: sample photos).

    ``backend_options`` go to :meth:`Detector.load` (device, precision). A check that compared no
    detections fails: agreement on nothing proves nothing.
    """
    from .samples import sample_images

    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if not 0.0 < min_score <= 1.0:
        raise InputError(f"min_score must be in (0, 1], got {min_score}")
    t0 = time.perf_counter()
    det = Detector.load(engine, **(backend_options or {}))
    ref = reference_backend(det.backend, weights)
    files = [Path(p) for p in images] if images else sample_images()
    limits = dict(THRESHOLDS.get(det.backend.precision, THRESHOLDS["fp32"]))
    limits.update(thresholds or {})

    head_err = {"loc": [0.0, 0.0, 0], "conf": [0.0, 0.0, 0]}  # max, sum, count
    classes = det.config.num_classes
    tot = ClassMatch()
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        x, sizes = preprocess(chunk, det.config)
        loc_a, conf_a = det.infer(x)
        loc_r, conf_r = ref.run(x)
        for name, a, r in (("loc", loc_a, loc_r), ("conf", conf_a, conf_r)):
            d = np.abs(a.astype(np.float64) - r)
            head_err[name][0] = max(head_err[name][0], float(d.max()))
            head_err[name][1] += float(d.sum())
            head_err[name][2] += d.size
        got = det.postprocess(loc_a, conf_a, sizes)
        want = _reference_detections(loc_r, conf_r, det, sizes)
        for g, w, (width, height) in zip(got, want, sizes):
            g = g.above(min_score)
            to_input = det.config.size / np.array([width, height, width, height], dtype=np.float64)
            for c in range(1, classes):
                rb, rs = w[c]
                keep = rs >= min_score
                sel = g.class_ids == c
                m, miss, extra, sd, bd = match_detections(
                    rb[keep], rs[keep], g.boxes[sel].astype(np.float64), g.scores[sel].astype(np.float64)
                )
                tot.matched += m
                tot.missing += miss
                tot.extra += extra
                tot.score_deltas.extend(sd.tolist())
                tot.box_deltas_px.extend(bd.max(axis=1).tolist())
                tot.box_deltas_input_px.extend((bd * to_input).max(axis=1).tolist())
        if progress is not None:
            progress(len(chunk))

    heads = {k: {"max_abs": v[0], "mean_abs": v[1] / max(v[2], 1)} for k, v in head_err.items()}
    n_ref = tot.matched + tot.missing
    n_got = tot.matched + tot.extra
    dets = {
        "reference": n_ref, "artifact": n_got, "matched": tot.matched, "missing": tot.missing,
        "extra": tot.extra,
        "recall": tot.matched / n_ref if n_ref else 1.0,
        "precision": tot.matched / n_got if n_got else 1.0,
        **_spread("score_delta", tot.score_deltas), **_spread("box_delta_px", tot.box_deltas_px),
        **_spread("box_delta_input_px", tot.box_deltas_input_px),
    }  # fmt: skip
    failures = []
    for key, val in (
        ("loc_max", heads["loc"]["max_abs"]),
        ("conf_max", heads["conf"]["max_abs"]),
        ("score_delta", dets["p95_score_delta"]),
        ("box_px", dets["p95_box_delta_input_px"]),
    ):
        if not val <= limits[key]:
            failures.append(f"{key} {val:.3g} > {limits[key]:.3g}")
    if dets["reference"] == 0:
        failures.append(f"the reference has no detection scoring >= {min_score}: nothing was compared")
    for key in ("recall", "precision"):
        if not dets[key] >= limits[key]:
            failures.append(f"detection {key} {dets[key]:.3f} < {limits[key]:.3f}")
    report = CheckReport(
        artifact=str(engine), reference=ref.path, precision=det.backend.precision,
        images=[str(f) for f in files], min_score=min_score, input_size=det.config.size, heads=heads,
        detections=dets, thresholds=limits, failures=failures, seconds=time.perf_counter() - t0,
        notes=_semantics_notes(det.config, getattr(ref, "checkpoint_config", None)),
    )  # fmt: skip
    det.close()
    ref.close()
    return report
