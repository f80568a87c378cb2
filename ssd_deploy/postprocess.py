"""Decode + Detect in numpy: the runtime post-process every backend shares (docs/ssd.md ("Detect")).

For each image and each foreground class: keep priors whose score is > ``conf_thresh``, take the
``top_k`` highest as candidates, run greedy NMS (IoU > ``nms_thresh`` suppresses), then optionally
cap each image at ``keep_top_k`` detections by score across classes. torchvision's variant
(``DetectParams.clip_boxes``, ``wh_clamp``, ``nms_nan_suppresses``; docs/checkpoints.md) clamps
the log-size offsets before ``exp`` and clips the boxes to the image before NMS.

Two implementations give the same bits. Where numba is installed (:mod:`ssd_deploy.ops.jit`),
the top-k selection and greedy NMS are compiled loops. Otherwise everything is whole-array numpy
work: candidates come from one ``flatnonzero`` over a class-major score mask, after classes with
more than ``top_k`` candidates have been thinned by a radix-histogram floor; one integer-key sort
orders them by (image, class, descending score) and a rank cut keeps the ``top_k`` best exactly;
greedy NMS runs for all classes at once in its fixed-point form
(:func:`ssd_deploy.ops.boxes.nms_keep`), classes padded into a few size buckets so that one crowded
class does not make every class pay for a ``top_k x top_k`` pairwise matrix. Either way only the
candidates are decoded, and no state is shared between calls: the functions are safe to call from
several threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .config import DetectParams
from .ops import jit
from .ops.boxes import decode, nms_keep_planes, scale_boxes

__all__ = ["Detections", "detect", "detect_array"]

_DEFAULT_PARAMS = DetectParams()  # frozen, so one shared default is safe

# Positive float32 bit patterns sort like the floats; inverted they sort descending.
_SCORE_BITS = 31
_MAX_POS_BITS = np.int64((1 << _SCORE_BITS) - 1)
# Smallest padded width of a group in NMS, and the number of extra (padding) pairs below which two
# widths share one call: about what the fixed cost of one more NMS call (~0.1 ms) buys in pairs.
_MIN_BUCKET = 16
_MERGE_PAIRS = 32768


@dataclass(frozen=True)
class Detections:
    """Detections of one image, by descending score.

    ``boxes [K, 4]`` float32 corner boxes (normalised to the network input unless
    :meth:`scaled`), ``scores [K]`` float32, ``class_ids [K]`` int64 (background excluded).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def scaled(self, width: float, height: float) -> Detections:
        """The same detections with boxes in pixels of a ``width`` x ``height`` image."""
        return Detections(scale_boxes(self.boxes, width, height), self.scores, self.class_ids)


class _Kept(NamedTuple):
    """Surviving detections of a batch, ordered by (image, class, descending score)."""

    image: np.ndarray  # int64 [N]
    label: np.ndarray  # int64 [N]
    score: np.ndarray  # float32 [N]
    boxes: np.ndarray  # float32 [N, 4]


def _as_inputs(
    loc: np.ndarray, conf: np.ndarray, priors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    loc = np.asarray(loc, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    priors = np.asarray(priors, dtype=np.float32)
    if conf.ndim != 3:
        raise ValueError(f"conf must be [B, P, C], got shape {conf.shape}")
    b, p, _ = conf.shape
    if loc.shape != (b, p, 4):
        raise ValueError(f"loc must be [B, P, 4] = {(b, p, 4)} to match conf {conf.shape}, got {loc.shape}")
    if priors.shape != (p, 4):
        raise ValueError(f"priors must be [P, 4] = {(p, 4)}, got {priors.shape}")
    return loc, conf, priors


def _desc_score_key(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """int64 key sorting by ``group`` ascending, then ``score`` descending (scores > 0)."""
    bits = score.view(np.int32).astype(np.int64)
    return (group.astype(np.int64) << _SCORE_BITS) | (_MAX_POS_BITS - bits)


def _rank_in_group(sorted_group: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input sorted by group)."""
    n = sorted_group.shape[0]
    idx = np.arange(n)
    starts = np.empty(n, dtype=bool)
    if n:
        starts[0] = True
        np.not_equal(sorted_group[1:], sorted_group[:-1], out=starts[1:])
    first = np.maximum.accumulate(np.where(starts, idx, 0))
    return idx - first


# Histogram bins in all (rows x bins per row) for the top-k floor, and the range of bins per row.
_HIST_TOTAL = 1 << 20
_HIST_BITS = (6, 10)


def _top_k_floor(
    rows: np.ndarray, mask: np.ndarray, counts: np.ndarray, k: int, conf_thresh: float
) -> np.ndarray:
    """Per row, a score floor keeping at least ``k`` of the ``mask``ed entries (``counts`` > k).

    A radix histogram of the float32 bit patterns (monotonic for positive floats) over the
    candidates, up to 1024 bins per row spanning ``(conf_thresh, max]``: the floor is the lower
    edge of the bin where the count from the top reaches ``k``. That is a few linear passes over
    the candidates, several times cheaper than ``np.partition`` over whole rows. A row whose
    boundary bin holds too many (scores packed into a narrow range) gets the exact ``k``-th
    largest from ``np.partition`` instead.
    """
    r, p = rows.shape
    hist_bits = int(np.clip(np.log2(_HIST_TOTAL // r), *_HIST_BITS)) if r < _HIST_TOTAL else _HIST_BITS[0]
    nbins = 1 << hist_bits
    lo = np.float32(conf_thresh).view(np.int32)
    # Whole rows rather than a boolean gather of the candidates (crowded rows are mostly
    # candidates, and the gather plus a per-row np.repeat of offsets cost more than they save):
    # non-candidates become 0 and land in bin 0, whose count is then corrected.
    bits = rows.view(np.int32) - lo  # > 0 for every candidate: all are above conf_thresh
    bits *= mask
    shift = max(0, int(bits.max()).bit_length() - hist_bits)
    bits >>= shift
    bits += np.arange(0, r * nbins, nbins, dtype=np.int32)[:, None]
    hist = np.bincount(bits.ravel(), minlength=r * nbins).reshape(r, nbins)
    hist[:, 0] -= p - counts
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # entries in bin b or higher
    boundary = np.count_nonzero(above >= k, axis=1) - 1
    floor_bits = (boundary.astype(np.int32) << shift) + lo
    floor = floor_bits.view(np.float32)
    loose = np.flatnonzero(above[np.arange(r), boundary] > 4 * k)
    if loose.size:
        # Non-candidates (NaN included: np.partition sorts it above every number) out of the way.
        scores = np.where(mask[loose], rows[loose], np.float32(-np.inf))
        floor[loose] = np.partition(scores, p - k, axis=1)[:, p - k]
    return floor


def _candidates(
    conf: np.ndarray, params: DetectParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (image, class) group: the ``top_k`` best priors with score > ``conf_thresh``.

    Returns ``(group, prior, score, rank)`` with ``group = image * C + class``, ordered by group,
    then descending score, and ``rank`` the position within the group.
    """
    b, p, c = conf.shape
    k = params.top_k
    kernels = jit.kernels()
    if kernels is not None:
        background = params.background_label if 0 <= params.background_label < c else -1
        return kernels.top_k_candidates(conf, params.conf_thresh, k, background)
    thresh = np.float32(params.conf_thresh) + np.float32(0.0)  # -0.0 -> +0.0 for the bit-pattern floor
    # Class-major copy: each (image, class) group becomes one contiguous row.
    rows = np.ascontiguousarray(conf.transpose(0, 2, 1)).reshape(b * c, p)
    mask = rows > thresh
    if 0 <= params.background_label < c:
        mask.reshape(b, c, p)[:, params.background_label] = False
    if k < p:
        counts = np.count_nonzero(mask, axis=1)
        crowded = np.flatnonzero(counts > k)
        if crowded.size:
            # Crowded groups: drop scores below a floor that keeps at least top_k (and usually
            # only a few more), so the sort below sees about top_k entries per group; the rank
            # cut after the sort makes the selection exact.
            sub, sub_mask = rows[crowded], mask[crowded]
            floor = _top_k_floor(sub, sub_mask, counts[crowded], k, float(thresh))
            mask[crowded] = sub_mask & (sub >= floor[:, None])
    flat = np.flatnonzero(mask)
    group = flat // p
    prior = flat - group * p
    score = rows.ravel()[flat]
    order = np.argsort(_desc_score_key(group, score), kind="stable")
    group, prior, score = group[order], prior[order], score[order]
    rank = _rank_in_group(group)
    if k < p:
        top = rank < k
        idx = np.flatnonzero(top)
        group, prior, score, rank = group[idx], prior[idx], score[idx], rank[idx]
    return group, prior, score, rank


def _bucket_nms(
    rank: np.ndarray, boxes: np.ndarray, iou_threshold: float, nan_suppresses: bool = True
) -> np.ndarray:
    """Greedy NMS for every group at once. Elements come sorted by group, then descending score;
    ``rank`` is each one's position within its group."""
    n = rank.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    kernels = jit.kernels()
    if kernels is not None:
        # Compiled greedy loop over the groups as they lie (no padding): same result, a few times
        # cheaper since it only compares kept boxes with the ones still alive after them.
        starts = np.append(np.flatnonzero(rank == 0), n)
        return kernels.greedy_nms(boxes.T, np.ones(n, dtype=bool), starts, iou_threshold, nan_suppresses)
    gi = np.cumsum(rank == 0) - 1  # dense group index of each element
    sizes = np.bincount(gi)
    kmax = int(sizes.max())
    # Coordinate planes [4, group, rank]: what the pairwise NMS math reads contiguously.
    planes = np.zeros((4, sizes.shape[0], kmax), dtype=boxes.dtype)
    planes[:, gi, rank] = boxes.T
    valid = np.zeros((sizes.shape[0], kmax), dtype=bool)
    valid[gi, rank] = True
    keep = np.zeros_like(valid)
    for rows, width in _buckets(sizes):
        keep[rows, :width] = nms_keep_planes(
            planes[:, rows, :width], valid[rows, :width], iou_threshold, nan_suppresses
        )
    return keep[gi, rank]


def _buckets(sizes: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Split groups into a few padded widths, so that one crowded class does not make every class
    pay for a ``top_k x top_k`` pairwise matrix, nor many small classes pay for a call each.

    Groups start in power-of-two classes (at least ``_MIN_BUCKET``), so there are at most
    ~log2(top_k) of them, each padded to its largest member. Going from the narrowest up, a class
    joins the next wider one when the extra pairs that costs are fewer than ``_MERGE_PAIRS``.
    """
    pow2 = np.maximum(_MIN_BUCKET, 1 << np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64))
    classes = [np.flatnonzero(pow2 == w) for w in np.unique(pow2)]
    out = []
    carried = np.zeros(0, dtype=np.int64)
    for i, rows in enumerate(classes):
        rows = np.concatenate([carried, rows])
        width = int(sizes[rows].max())
        if i + 1 < len(classes):
            wider = int(sizes[classes[i + 1]].max())
            # Pairs (upper triangle) that padding these rows to the wider width would add.
            if rows.size * (wider * wider - width * width) // 2 < _MERGE_PAIRS:
                carried = rows
                continue
        out.append((rows, width))
        carried = np.zeros(0, dtype=np.int64)
    return out


def _detect_core(
    loc: np.ndarray,
    conf: np.ndarray,
    priors: np.ndarray,
    variances: Sequence[float],
    params: DetectParams,
) -> _Kept:
    loc, conf, priors = _as_inputs(loc, conf, priors)
    params.validate()
    c = conf.shape[2]
    group, prior, score, rank = _candidates(conf, params)
    img = group // c
    boxes = decode(
        np.take(loc.reshape(-1, 4), img * conf.shape[1] + prior, axis=0),
        np.take(priors, prior, axis=0),
        variances,
        params.wh_clamp,
    )
    if params.clip_boxes:
        # torchvision clips every decoded box to the image before NMS; clipping is per box, so
        # doing it only for the candidates (after the score cut) gives the same result.
        np.clip(boxes, np.float32(0), np.float32(1), out=boxes)
    keep = _bucket_nms(rank, boxes, params.nms_thresh, params.nms_nan_suppresses)
    idx = np.flatnonzero(keep)
    img, label, score, boxes = img[idx], group[idx] - img[idx] * c, score[idx], boxes[idx]
    cap = params.keep_top_k
    if cap is not None and img.size:
        by_image = np.argsort(_desc_score_key(img, score), kind="stable")
        within_cap = np.zeros(img.size, dtype=bool)
        within_cap[by_image] = _rank_in_group(img[by_image]) < cap
        idx = np.flatnonzero(within_cap)
        img, label, score, boxes = img[idx], label[idx], score[idx], boxes[idx]
    return _Kept(img.astype(np.int64), label.astype(np.int64), score, boxes)


def _as_list(kept: _Kept, batch: int) -> list[Detections]:
    if batch == 0:
        return []
    order = np.argsort(_desc_score_key(kept.image, kept.score), kind="stable")
    bounds = np.searchsorted(kept.image[order], np.arange(1, batch))
    return [Detections(kept.boxes[idx], kept.score[idx], kept.label[idx]) for idx in np.split(order, bounds)]


def _as_array(kept: _Kept, batch: int, classes: int, top_k: int) -> np.ndarray:
    out = np.zeros((batch, classes, top_k, 5), dtype=np.float32)
    rank = _rank_in_group(kept.image * classes + kept.label)
    out[kept.image, kept.label, rank, 0] = kept.score
    out[kept.image, kept.label, rank, 1:] = kept.boxes
    return out


def detect(
    loc: np.ndarray,
    conf: np.ndarray,
    priors: np.ndarray,
    variances: Sequence[float] = (0.1, 0.2),
    params: DetectParams = _DEFAULT_PARAMS,
) -> list[Detections]:
    """Decode + Detect a batch: ``loc [B,P,4]``, softmax ``conf [B,P,C]``, ``priors [P,4]``
    -> one :class:`Detections` per image, by descending score."""
    kept = _detect_core(loc, conf, priors, variances, params)
    return _as_list(kept, np.asarray(conf).shape[0])


def detect_array(
    loc: np.ndarray,
    conf: np.ndarray,
    priors: np.ndarray,
    variances: Sequence[float] = (0.1, 0.2),
    params: DetectParams = _DEFAULT_PARAMS,
) -> np.ndarray:
    """The classic ssd.pytorch output ``[B, C, top_k, 5]`` float32: per class, rows
    ``(score, x1, y1, x2, y2)`` by descending score, zero padded; the background class stays zero."""
    kept = _detect_core(loc, conf, priors, variances, params)
    b, _, c = np.asarray(conf).shape
    return _as_array(kept, b, c, params.top_k)


def detect_both(
    loc: np.ndarray,
    conf: np.ndarray,
    priors: np.ndarray,
    variances: Sequence[float] = (0.1, 0.2),
    params: DetectParams = _DEFAULT_PARAMS,
) -> tuple[list[Detections], np.ndarray]:
    """:func:`detect` and :func:`detect_array` from one pass of the post-process."""
    kept = _detect_core(loc, conf, priors, variances, params)
    b, _, c = np.asarray(conf).shape
    return _as_list(kept, b), _as_array(kept, b, c, params.top_k)
