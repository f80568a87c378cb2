"""The numba kernels behind :mod:`ssd_deploy.ops.jit` (imported only through it).

Each kernel repeats the numpy path's arithmetic operation by operation, in the inputs' own float
type, so the results are the same bits (``tests/test_jit.py`` holds them to that):

* :func:`greedy_nms`: ssd.pytorch's greedy NMS loop, one pass per group of score-sorted boxes; it
  computes IoU only between a kept box and the boxes still alive after it, which is what makes
  it cheaper than the numpy path's all-pairs matrix.
* :func:`resize_normalize`: OpenCV ``INTER_LINEAR`` taps (horizontal, then vertical), channel
  order and mean in one pass, straight into a batch slot.

``error_model="numpy"``: a 0/0 IoU is NaN as in numpy, not a ZeroDivisionError. ``nogil``: callers'
threads run them in parallel. No ``fastmath``: it would allow reassociation and fused multiply-add,
which change the last bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}


@njit(**_JIT)
def greedy_nms(x1, y1, x2, y2, keep, starts, t, zero, nan_suppresses):
    """In place: ``keep`` (valid candidates in) becomes the boxes greedy NMS keeps.

    Boxes ``starts[g]:starts[g + 1]`` form group ``g``, sorted by descending score. A box is
    suppressed by an earlier kept box of its group when ``not iou <= t`` (``nan_suppresses``:
    ssd.pytorch, a NaN IoU suppresses) or ``iou > t`` (torchvision). ``zero`` is 0 in the boxes'
    float type (an argument, so that the clamps stay exact whatever ``t`` is, inf and NaN included).
    """
    m = x1.shape[0]
    area = np.empty(m, dtype=x1.dtype)
    for j in range(m):
        area[j] = (x2[j] - x1[j]) * (y2[j] - y1[j])
    for g in range(starts.shape[0] - 1):
        end = starts[g + 1]
        for i in range(starts[g], end - 1):
            if not keep[i]:
                continue
            ax1 = x1[i]
            ay1 = y1[i]
            ax2 = x2[i]
            ay2 = y2[i]
            ai = area[i]
            for j in range(i + 1, end):
                if not keep[j]:
                    continue
                # numpy's minimum/maximum propagate a NaN from either side; a plain comparison
                # would pick the other operand.
                bx1 = x1[j]
                by1 = y1[j]
                bx2 = x2[j]
                by2 = y2[j]
                right = ax2 if (ax2 < bx2 or ax2 != ax2) else bx2
                left = ax1 if (ax1 > bx1 or ax1 != ax1) else bx1
                bottom = ay2 if (ay2 < by2 or ay2 != ay2) else by2
                top = ay1 if (ay1 > by1 or ay1 != ay1) else by1
                w = right - left
                h = bottom - top
                if w < zero:  # clamp at 0; NaN stays NaN, as with torch.clamp
                    w = zero
                if h < zero:
                    h = zero
                inter = w * h
                iou = inter / ((area[j] - inter) + ai)
                if nan_suppresses:
                    if not iou <= t:
                        keep[j] = False
                elif iou > t:
                    keep[j] = False


@njit(**_JIT)
def resize_normalize(img, y0, y1, wy0, wy1, x0, x1, wx0, wx1, order, mean, out):
    """``out[c] = resize(img)[..., order[c]] - mean[c]`` for an ``[H, W, C]`` uint8 image and an
    ``[3, S_h, S_w]`` float32 slot, with the per-axis taps and weights of
    :func:`ssd_deploy.preprocess._axis_table`."""
    for oy in range(y0.shape[0]):
        row_a = img[y0[oy]]
        row_b = img[y1[oy]]
        b0 = wy0[oy]
        b1 = wy1[oy]
        for ox in range(x0.shape[0]):
            xa = x0[ox]
            xb = x1[ox]
            a0 = wx0[ox]
            a1 = wx1[ox]
            for c in range(3):
                src = order[c]
                upper = np.float32(row_a[xa, src]) * a0 + np.float32(row_a[xb, src]) * a1
                lower = np.float32(row_b[xa, src]) * a0 + np.float32(row_b[xb, src]) * a1
                out[c, oy, ox] = (upper * b0 + lower * b1) - mean[c]


_BINS_LOG2 = 10  # histogram bins per class for the top-k floor


@njit(**_JIT)
def top_k_candidates(conf, thresh, k, background, group, prior, score, rank):
    """Per (image, class) of ``conf [B, P, C]`` (float32, C-contiguous), the ``k`` best priors with
    score > ``thresh`` (>= +0), ties going to the lower prior index, written to the outputs ordered
    by group (``image * C + class``), then descending score, then prior; returns how many.

    Positive float32 bit patterns order like the values, so a class with more than ``k``
    candidates gets a 1024-bin histogram of its bits between ``thresh`` and its maximum; the bin
    where the count from the top reaches ``k`` gives a floor that keeps at least ``k`` (usually a
    few more). Only those are sorted, by an integer key (inverted score bits, then prior). Three
    row-major passes over ``conf`` per image: counts and maxima, histograms, collection.
    """
    n_img, n_pri, n_cls = conf.shape
    cb = conf.view(np.int32)
    lo = np.int64(np.array([thresh], dtype=np.float32).view(np.int32)[0])
    n_bins = 1 << _BINS_LOG2
    counts = np.zeros(n_cls, dtype=np.int64)
    top = np.zeros(n_cls, dtype=np.int64)
    shift = np.zeros(n_cls, dtype=np.int64)
    floor = np.zeros(n_cls, dtype=np.int64)
    hist = np.zeros((n_cls, n_bins), dtype=np.int64)
    fill = np.zeros(n_cls, dtype=np.int64)
    start = np.zeros(n_cls + 1, dtype=np.int64)
    out = 0
    for b in range(n_img):
        counts[:] = 0
        top[:] = lo
        for p in range(n_pri):
            for c in range(n_cls):
                if conf[b, p, c] > thresh:  # NaN never is
                    counts[c] += 1
                    top[c] = max(top[c], np.int64(cb[b, p, c]))
        if 0 <= background < n_cls:
            counts[background] = 0
        crowded = False
        for c in range(n_cls):
            floor[c] = lo
            if counts[c] > k:
                crowded = True
                span = top[c] - lo
                width = 0
                while span >> width:
                    width += 1
                shift[c] = max(0, width - _BINS_LOG2)
        if crowded:
            hist[:] = 0
            for p in range(n_pri):
                for c in range(n_cls):
                    if counts[c] > k and conf[b, p, c] > thresh:
                        hist[c, (np.int64(cb[b, p, c]) - lo) >> shift[c]] += 1
        total = 0
        for c in range(n_cls):
            start[c] = total
            m = counts[c]
            if m > k:
                above = 0
                edge = n_bins - 1
                while True:
                    above += hist[c, edge]
                    if above >= k or edge == 0:
                        break
                    edge -= 1
                floor[c] = lo + (edge << shift[c])
                m = above
            total += m
        start[n_cls] = total
        keys = np.empty(total, dtype=np.int64)
        fill[:] = start[:n_cls]
        for p in range(n_pri):
            for c in range(n_cls):
                if counts[c] > 0 and conf[b, p, c] > thresh:
                    v = np.int64(cb[b, p, c])
                    if v >= floor[c]:
                        keys[fill[c]] = ((0x7FFFFFFF - v) << 32) | p
                        fill[c] += 1
        for c in range(n_cls):
            ordered = np.sort(keys[start[c] : start[c + 1]])
            for r in range(min(k, ordered.shape[0])):
                p = ordered[r] & 0xFFFFFFFF
                group[out] = b * n_cls + c
                prior[out] = p
                score[out] = conf[b, p, c]
                rank[out] = r
                out += 1
    return out
