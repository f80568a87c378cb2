"""Reading the Detect result an end-to-end artifact computes in its graph (docs/end_to_end.md).

The graph bakes one set of Detect parameters in. A request with a higher ``conf_thresh`` or a
smaller ``keep_top_k`` is still exact from the graph's output: the candidates above a higher
threshold are a prefix of each class's score-ordered list, and greedy NMS decides each candidate
from the earlier ones only, so the numpy Detect would keep exactly the baked detections scoring
above it; a smaller cap takes the best of those. Any other change (``nms_thresh``, ``top_k``,
background label, a lower threshold or a larger cap) is not, and the caller falls back to the numpy
Detect on ``loc``/``conf``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..config import DetectParams
from ..contract import DETECTION_COLUMNS, END_TO_END_KEY, END_TO_END_ROW_ORDER
from ..errors import InputError
from ..postprocess import Detections, _as_array, _as_list, _Kept

__all__ = [
    "EndToEndError",
    "EndToEndSpec",
    "in_graph_kept",
    "in_graph_mismatch",
    "kept_as_array",
    "kept_as_list",
    "read_end_to_end",
]


class EndToEndError(InputError):
    """The graph cannot get (or already has) the end-to-end outputs; one line naming the file."""


@dataclass(frozen=True)
class EndToEndSpec:
    """What an end-to-end graph bakes in, as stored in its metadata."""

    conf_thresh: float
    nms_thresh: float
    top_k: int
    keep_top_k: int | None
    background_label: int
    num_classes: int
    max_detections: int  # D
    #: Extra TopK candidates ranked by (score, prior index) for runtimes whose TopK is not stable.
    tie_margin: int = 0

    def to_json(self) -> str:
        return json.dumps({
            "conf_thresh": self.conf_thresh, "nms_thresh": self.nms_thresh, "top_k": self.top_k,
            "keep_top_k": self.keep_top_k, "background_label": self.background_label,
            "num_classes": self.num_classes, "max_detections": self.max_detections,
            "tie_margin": self.tie_margin, "row_order": END_TO_END_ROW_ORDER,
            "columns": list(DETECTION_COLUMNS),
            "boxes": "normalised to the network input", "ties": "prior index",
        }, sort_keys=True)  # fmt: skip

    @classmethod
    def from_json(cls, text: str, source: str = "artifact") -> EndToEndSpec:
        try:
            d = json.loads(text)
            cap = d.get("keep_top_k")
            return cls(
                conf_thresh=float(d["conf_thresh"]), nms_thresh=float(d["nms_thresh"]),
                top_k=int(d["top_k"]), keep_top_k=None if cap is None else int(cap),
                background_label=int(d["background_label"]), num_classes=int(d["num_classes"]),
                max_detections=int(d["max_detections"]), tie_margin=int(d.get("tie_margin", 0)),
            )  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise EndToEndError(
                f"{source}: bad '{END_TO_END_KEY}' metadata: {type(e).__name__}: {e}"
            ) from None

    @property
    def params(self) -> DetectParams:
        return DetectParams(
            conf_thresh=self.conf_thresh, nms_thresh=self.nms_thresh, top_k=self.top_k,
            keep_top_k=self.keep_top_k, background_label=self.background_label,
        )  # fmt: skip


def read_end_to_end(meta: dict[str, str], source: str = "artifact") -> EndToEndSpec | None:
    """The end-to-end spec in an artifact's metadata, ``None`` when it has none."""
    text = meta.get(END_TO_END_KEY)
    return None if text is None else EndToEndSpec.from_json(text, source)


def in_graph_mismatch(spec: EndToEndSpec, params: DetectParams, num_priors: int) -> str | None:
    """Why ``params`` cannot be read from a graph that baked ``spec`` in; ``None`` when it can."""
    if min(params.top_k, num_priors) != spec.top_k:
        return f"top_k {params.top_k} differs from the {spec.top_k} baked into the graph"
    if np.float32(params.nms_thresh) != np.float32(spec.nms_thresh):
        return f"nms_thresh {params.nms_thresh} differs from the {spec.nms_thresh} baked into the graph"
    if params.background_label != spec.background_label:
        return f"background_label {params.background_label} differs from the baked {spec.background_label}"
    if np.float32(params.conf_thresh) < np.float32(spec.conf_thresh):
        return f"conf_thresh {params.conf_thresh} is below the {spec.conf_thresh} baked into the graph"
    if spec.keep_top_k is not None and (params.keep_top_k is None or params.keep_top_k > spec.keep_top_k):
        return f"keep_top_k {params.keep_top_k} is looser than the {spec.keep_top_k} baked into the graph"
    return None


def in_graph_kept(rows: np.ndarray, counts: np.ndarray, params: DetectParams, spec: EndToEndSpec) -> _Kept:
    """The graph's ``detections [B, D, 6]``/``num_detections [B]`` filtered to ``params`` (which
    :func:`in_graph_mismatch` accepted), as the numpy Detect's internal class-major result."""
    b, d, _ = rows.shape
    mask = np.arange(d)[None, :] < counts.astype(np.int64)[:, None]
    score = rows[..., 4]
    if np.float32(params.conf_thresh) > np.float32(spec.conf_thresh):
        mask &= score > np.float32(params.conf_thresh)
    cap = params.keep_top_k
    if cap is not None and (spec.keep_top_k is None or cap < spec.keep_top_k) and d > cap:
        # Rank by descending score, ties by row (class, then prior order): the numpy Detect's cap.
        key = np.where(mask, score, -np.inf)
        order = np.argsort(-key, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(d)[None, :].repeat(b, 0), axis=1)
        mask &= rank < cap
    img, pos = np.nonzero(mask)
    picked = rows[img, pos]
    return _Kept(img.astype(np.int64), picked[:, 5].astype(np.int64), np.ascontiguousarray(picked[:, 4]),
                 np.ascontiguousarray(picked[:, :4]))  # fmt: skip


def kept_as_list(kept: _Kept, batch: int) -> list[Detections]:
    """One :class:`~ssd_deploy.postprocess.Detections` per image, by descending score."""
    return _as_list(kept, batch)


def kept_as_array(kept: _Kept, batch: int, classes: int, top_k: int) -> np.ndarray:
    """The classic ``[B, C, top_k, 5]`` array."""
    return _as_array(kept, batch, classes, top_k)
