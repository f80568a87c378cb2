"""Box arithmetic for the runtime: decode, areas, IoU and batched greedy NMS, in numpy (greedy NMS
runs as a numba kernel with the same results where :mod:`ssd_deploy.ops.jit` has one).

Boxes are corner boxes ``(x1, y1, x2, y2)``; every function accepts any number of leading
dimensions. The arithmetic follows ssd.pytorch (docs/ssd.md ("Detect")) operation by operation, in float32,
so that results agree with the PyTorch reference to the last bit wherever the two libraries' ``exp``
agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import jit

__all__ = ["box_area", "box_iou", "decode", "nms", "nms_keep", "nms_keep_planes", "scale_boxes"]


def decode(
    loc: np.ndarray,
    priors: np.ndarray,
    variances: Sequence[float] = (0.1, 0.2),
    wh_clamp: float | None = None,
) -> np.ndarray:
    """Encoded offsets ``loc [..., 4]`` + center-size ``priors [..., 4]`` -> corner boxes ``[..., 4]``.

    ``c = p_xy + l_xy * v0 * p_wh``, ``wh = p_wh * exp(l_wh * v1)``, ``min = c - wh/2``,
    ``max = min + wh``. No clipping: boxes may leave [0, 1]. ``wh_clamp`` (torchvision's
    ``bbox_xform_clip``, log(1000/16)) caps ``l_wh * v1`` from above before ``exp``; ``None`` (as
    ssd.pytorch) does not. ``loc`` and ``priors`` broadcast against each other; the result is
    float32 unless an input is float64.
    """
    loc = np.asarray(loc)
    priors = np.asarray(priors)
    dtype = np.result_type(loc.dtype, priors.dtype, np.float32)
    loc = loc.astype(dtype, copy=False)
    priors = priors.astype(dtype, copy=False)
    if loc.shape[-1] != 4 or priors.shape[-1] != 4:
        raise ValueError(f"decode: last dimension must be 4, got loc {loc.shape}, priors {priors.shape}")
    v0, v1 = dtype.type(variances[0]), dtype.type(variances[1])
    out = np.empty(np.broadcast_shapes(loc.shape, priors.shape), dtype=dtype)
    loc = loc.reshape((1,) * (out.ndim - loc.ndim) + loc.shape)
    priors = priors.reshape((1,) * (out.ndim - priors.ndim) + priors.shape)
    # Coordinate planes ([4, ...], contiguous): the arithmetic then runs along long rows rather
    # than over rows of 2 values, several times faster for a few thousand boxes.
    lt = np.ascontiguousarray(np.moveaxis(loc, -1, 0))
    pt = np.ascontiguousarray(np.moveaxis(priors, -1, 0))
    # Same operations in the same order as ssd.pytorch: (l * v0) * p_wh, then + p_xy.
    center = lt[:2] * v0 * pt[2:] + pt[:2]
    log_wh = lt[2:] * v1
    if wh_clamp is not None:
        np.minimum(log_wh, dtype.type(wh_clamp), out=log_wh)
    wh = pt[2:] * np.exp(log_wh)
    ot = np.moveaxis(out, -1, 0)
    mins = center - wh / 2
    ot[:2] = mins
    ot[2:] = mins + wh
    return out


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area ``(x2 - x1) * (y2 - y1)`` of corner boxes ``[..., 4]`` (no +1 term; may be negative
    for degenerate boxes, as in ssd.pytorch)."""
    boxes = np.asarray(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``a [..., N, 4]`` and ``b [..., M, 4]`` -> ``[..., N, M]``.

    Leading dimensions broadcast. Intersection sides are clamped at 0; the union is
    ``(area_b - inter) + area_a`` in that order, as ssd.pytorch computes it. Two empty boxes give
    NaN (0/0), which compares False against any threshold.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    ea = a[..., :, None, :]
    eb = b[..., None, :, :]
    w = np.minimum(ea[..., 2], eb[..., 2]) - np.maximum(ea[..., 0], eb[..., 0])
    h = np.minimum(ea[..., 3], eb[..., 3]) - np.maximum(ea[..., 1], eb[..., 1])
    np.maximum(w, 0, out=w)
    np.maximum(h, 0, out=h)
    inter = w * h
    union = box_area(b)[..., None, :] - inter
    union += box_area(a)[..., :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def scale_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Normalised corner boxes ``[..., 4]`` -> pixels of a ``width`` x ``height`` image (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    return boxes * np.array([width, height, width, height], dtype=np.float32)


# Elements per block of the pairwise computation: the float temporaries stay in cache and are
# small enough for malloc to serve them from the heap. Whole-matrix temporaries of a few MB each get
# their own mmap, and the page faults of mapping them anew on every call cost more than the math.
_BLOCK_ELEMS = 1 << 16
_MIN_BLOCK_ROWS = 16
# Largest suppression matrix (all sets of one call together), in elements.
_MAX_MATRIX_ELEMS = 1 << 21


def _suppression_matrix(coords: np.ndarray, iou_threshold: float, nan_suppresses: bool = True) -> np.ndarray:
    """``over[n, i, j]`` (float32 0/1) for ``i < j``: would candidate ``i`` suppress ``j``?

    ``coords [4, N, K]`` are the contiguous ``x1, y1, x2, y2`` planes. One where
    ``not iou(i, j) <= t``, so NaN boxes suppress (and are suppressed) as in ssd.pytorch; with
    ``nan_suppresses=False`` one where ``iou(i, j) > t``, as torchvision's ``nms`` decides. The
    union is ``(area_j - inter) + area_i``, the later box's area first, as ssd.pytorch computes it
    with ``i`` the kept box. Entries with ``i >= j`` are 0. Float, not bool, because the NMS
    rounds consume it as a matrix product.
    """
    x1, y1, x2, y2 = coords
    n, k = x1.shape
    area = (x2 - x1) * (y2 - y1)
    t = coords.dtype.type(iou_threshold)
    over = np.zeros((n, k, k), dtype=np.float32)
    # Blocks of (groups, rows i, columns j >= first row): only the upper triangle is computed.
    groups = max(1, min(n, _BLOCK_ELEMS // (_MIN_BLOCK_ROWS * k)))
    rows = min(k, max(_MIN_BLOCK_ROWS, _BLOCK_ELEMS // (groups * k)))
    size = groups * rows * k
    w_buf, h_buf, tmp_buf = (np.empty(size, dtype=coords.dtype) for _ in range(3))
    zeros, near_buf = np.zeros(size, dtype=coords.dtype), np.empty(size, dtype=bool)
    strict_upper = np.triu(np.ones((rows, rows), dtype=bool), 1)
    for g0 in range(0, n, groups):
        g1 = min(g0 + groups, n)
        for i0 in range(0, k - 1, rows):
            i1 = min(i0 + rows, k)
            shape = (g1 - g0, i1 - i0, k - i0)
            m = shape[0] * shape[1] * shape[2]
            w, h, tmp, zero = (b[:m].reshape(shape) for b in (w_buf, h_buf, tmp_buf, zeros))
            near = near_buf[:m].reshape(shape)
            ri, cj = (slice(g0, g1), slice(i0, i1), None), (slice(g0, g1), None, slice(i0, None))
            np.minimum(x2[ri], x2[cj], out=w)
            np.maximum(x1[ri], x1[cj], out=tmp)
            w -= tmp
            np.minimum(y2[ri], y2[cj], out=h)
            np.maximum(y1[ri], y1[cj], out=tmp)
            h -= tmp
            # Clamp at 0 against an array of zeros: numpy's maximum with a scalar is a slow loop.
            # NaN propagates through maximum as through torch's clamp.
            np.maximum(w, zero, out=w)
            np.maximum(h, zero, out=h)
            w *= h  # intersection
            np.subtract(area[cj], w, out=h)
            h += area[ri]  # union
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                w /= h
            block = over[g0:g1, i0:i1, i0:]
            if nan_suppresses:
                np.less_equal(w, t, out=near)
                np.logical_not(near, out=block)
            else:
                np.greater(w, t, out=near)
                block[...] = near
            # Within the diagonal square only j > i counts: earlier candidates suppress later ones.
            block[:, :, : i1 - i0] *= strict_upper[: i1 - i0, : i1 - i0]
    return over


def nms_keep_planes(
    coords: np.ndarray, valid: np.ndarray, iou_threshold: float, nan_suppresses: bool = True
) -> np.ndarray:
    """:func:`nms_keep` for ``N`` sets given as coordinate planes ``coords [4, N, K]``
    (``x1, y1, x2, y2``, C-contiguous) and ``valid [N, K]``: the layout the pairwise math reads,
    for callers that can build it without a transposing copy. ``nan_suppresses``: see
    :func:`nms_keep`."""
    n, k = valid.shape
    if k == 0 or n == 0:
        return valid.copy()
    # float64 stays float64; anything else (float16, other byte orders) is computed in float32.
    dtype = np.float64 if coords.dtype.kind == "f" and coords.dtype.itemsize == 8 else np.float32
    coords = np.ascontiguousarray(coords, dtype=dtype)
    kernels = jit.kernels()
    if kernels is not None:
        starts = np.arange(0, n * k + 1, k)
        keep = kernels.greedy_nms(
            coords.reshape(4, n * k), valid.reshape(-1), starts, iou_threshold, nan_suppresses
        )
        return keep.reshape(n, k)
    # Sets are independent: bound the [sets, K, K] matrix (8 MB at most) for large batches.
    step = max(1, _MAX_MATRIX_ELEMS // (k * k))
    if n > step:
        return np.concatenate(
            [
                nms_keep_planes(coords[:, s : s + step], valid[s : s + step], iou_threshold, nan_suppresses)
                for s in range(0, n, step)
            ]
        )
    # Invalid candidates are never kept, so they suppress nothing.
    over = _suppression_matrix(coords, iou_threshold, nan_suppresses)
    keep = valid.copy()
    for _ in range(k + 1):
        # One batched matrix-vector product per round: hits[j] = sum_i keep[i] * over[i, j].
        hits = np.matmul(keep.astype(np.float32)[:, None, :], over)[:, 0, :]
        new_keep = valid & (hits == 0)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def nms_keep(
    boxes: np.ndarray, valid: np.ndarray, iou_threshold: float, nan_suppresses: bool = True
) -> np.ndarray:
    """Batched greedy NMS over score-sorted candidates; returns the keep mask ``[..., K]``.

    ``boxes [..., K, 4]`` must be sorted by descending score along ``K`` within each leading index;
    ``valid [..., K]`` marks real candidates (padding is never kept and suppresses nothing).
    A NaN IoU (two empty boxes) suppresses when ``nan_suppresses`` (ssd.pytorch), not otherwise
    (torchvision).

    Greedy NMS keeps candidate ``j`` iff it is valid and no kept ``i < j`` overlaps it with
    IoU > ``iou_threshold``. That recursion has exactly one solution, and because ``keep[j]``
    depends only on ``keep[:j]`` the whole-array update below reaches it: after round ``r`` the
    first ``r`` entries are final, and the loop stops at the first round that changes nothing
    (at most ``K + 1`` rounds, usually a handful since only suppression chains need more).
    """
    boxes = np.asarray(boxes)
    dtype = np.float64 if boxes.dtype == np.float64 else np.float32
    lead, k = boxes.shape[:-2], boxes.shape[-2]
    if k == 0:
        return np.zeros(lead + (0,), dtype=bool)
    valid = np.broadcast_to(np.asarray(valid, dtype=bool), lead + (k,)).reshape(-1, k)
    coords = np.ascontiguousarray(np.moveaxis(boxes.reshape(-1, k, 4), -1, 0), dtype=dtype)
    return nms_keep_planes(coords, valid, iou_threshold, nan_suppresses).reshape(lead + (k,))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, by descending score (one set, no classes)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    keep = nms_keep(boxes[order], np.ones(len(order), dtype=bool), iou_threshold)
    return order[keep]
