"""ssd_deploy.ops.boxes: decode, areas, IoU, and the fixed-point greedy NMS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssd_deploy.ops.boxes import box_area, box_iou, decode, nms, nms_keep, scale_boxes

#: Every test here runs on the numba kernels and on the numpy path (conftest.runtime_path).
pytestmark = pytest.mark.usefixtures("runtime_path")


# -- decode ----------------------------------------------------------------------------------------
def test_decode_hand_computed() -> None:
    # prior (cx, cy, w, h) = (0.5, 0.5, 0.2, 0.4); offsets: +1 x, -1 y, w unchanged, h doubled.
    prior = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    loc = np.array([[1.0, -1.0, 0.0, math.log(2.0) / 0.2]], np.float32)
    # cx = 0.5 + 1*0.1*0.2 = 0.52, cy = 0.5 - 0.1*0.4 = 0.46, w = 0.2, h = 0.8
    np.testing.assert_allclose(decode(loc, prior), [[0.42, 0.06, 0.62, 0.86]], atol=1e-6)


def test_decode_custom_variances_and_no_clipping() -> None:
    prior = np.array([[0.05, 0.95, 0.3, 0.3]], np.float32)
    loc = np.array([[-2.0, 2.0, 1.0, 0.0]], np.float32)
    # v = (0.5, 1.0): cx = 0.05 - 2*0.5*0.3 = -0.25, cy = 0.95 + 0.3 = 1.25, w = 0.3*e, h = 0.3
    w = 0.3 * math.e
    want = [[-0.25 - w / 2, 1.1, -0.25 + w / 2, 1.4]]
    np.testing.assert_allclose(decode(loc, prior, (0.5, 1.0)), want, rtol=1e-6, atol=1e-6)


def test_decode_zero_offsets_give_prior_corners() -> None:
    rng = np.random.default_rng(0)
    priors = np.c_[rng.uniform(0, 1, (50, 2)), rng.uniform(0.05, 0.9, (50, 2))].astype(np.float32)
    got = decode(np.zeros_like(priors), priors)
    want = np.c_[priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2]
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert got.dtype == np.float32


def test_decode_leading_dims_broadcast() -> None:
    rng = np.random.default_rng(1)
    priors = rng.uniform(0.1, 0.5, (7, 4)).astype(np.float32)
    loc = rng.normal(0, 1, (2, 3, 7, 4)).astype(np.float32)
    got = decode(loc, priors)
    assert got.shape == (2, 3, 7, 4)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(got[i, j], decode(loc[i, j], priors))


def test_decode_rejects_bad_last_dim() -> None:
    with pytest.raises(ValueError, match="last dimension"):
        decode(np.zeros((3, 5)), np.zeros((3, 4)))


# -- areas and IoU ---------------------------------------------------------------------------------
def test_box_area_and_iou_hand_computed() -> None:
    a = np.array([[0, 0, 2, 2]], np.float32)
    b = np.array([[1, 1, 3, 3], [2, 0, 4, 2], [0, 0, 2, 2], [0.5, 0.5, 1.5, 1.5], [5, 5, 6, 6]], np.float32)
    np.testing.assert_allclose(box_area(b), [4, 4, 4, 1, 1])
    # overlap 1 / union 7; touching edge 0; identical 1; inside: 1/4; far apart 0
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0, 1, 0.25, 0]], rtol=1e-6)


def test_box_iou_properties() -> None:
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 1, (2, 30, 2))
    wh = rng.uniform(0.01, 0.5, (2, 30, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    a, b = boxes[0], boxes[1]
    iou = box_iou(a, b)
    assert iou.shape == (30, 30)
    assert (iou >= 0).all() and (iou <= 1 + 1e-6).all()
    np.testing.assert_allclose(iou, box_iou(b, a).T, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1, rtol=1e-6)
    # Batched leading dims broadcast like the 2-D case.
    batched = box_iou(boxes, boxes[::-1])
    assert batched.shape == (2, 30, 30)
    np.testing.assert_allclose(batched[0], iou, rtol=1e-6)
    # Against a float64 computation written out longhand.
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    iw = np.clip(
        np.minimum(a64[:, None, 2], b64[None, :, 2]) - np.maximum(a64[:, None, 0], b64[None, :, 0]), 0, None
    )
    ih = np.clip(
        np.minimum(a64[:, None, 3], b64[None, :, 3]) - np.maximum(a64[:, None, 1], b64[None, :, 1]), 0, None
    )
    inter = iw * ih
    area_a = (a64[:, 2] - a64[:, 0]) * (a64[:, 3] - a64[:, 1])
    area_b = (b64[:, 2] - b64[:, 0]) * (b64[:, 3] - b64[:, 1])
    np.testing.assert_allclose(iou, inter / (area_a[:, None] + area_b[None, :] - inter), rtol=1e-5, atol=1e-7)


def test_scale_boxes() -> None:
    got = scale_boxes(np.array([[0.1, 0.2, 0.5, 1.0]]), 640, 480)
    np.testing.assert_allclose(got, [[64, 96, 320, 480]], rtol=1e-6)
    assert got.dtype == np.float32


# -- greedy NMS ------------------------------------------------------------------------------------
def greedy_reference(boxes: np.ndarray, valid: np.ndarray, t: float) -> np.ndarray:
    """Textbook greedy NMS on boxes already in descending score order, IoU computed in float32 in
    ssd.pytorch's order (union = (area_later - inter) + area_kept)."""
    keep = np.zeros(len(boxes), dtype=bool)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    suppressed = ~valid.copy()
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep[i] = True
        for j in range(i + 1, len(boxes)):
            w = max(np.float32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]))
            h = max(np.float32(0), min(y2[i], y2[j]) - max(y1[i], y1[j]))
            inter = np.float32(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / np.float32(np.float32(area[j] - inter) + area[i])
            if not iou <= np.float32(t):
                suppressed[j] = True
    return keep


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...], spread: float = 1.0) -> np.ndarray:
    xy = rng.uniform(0, spread, shape + (2,))
    wh = rng.uniform(0.05, 0.4, shape + (2,))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


@pytest.mark.parametrize("t", [0.3, 0.45, 0.7])
def test_nms_keep_equals_greedy_on_random_sets(t: float) -> None:
    rng = np.random.default_rng(int(t * 100))
    boxes = random_boxes(rng, (12, 60), spread=0.6)  # crowded: plenty of suppression
    valid = rng.random((12, 60)) < 0.9
    got = nms_keep(boxes, valid, t)
    for g in range(12):
        np.testing.assert_array_equal(got[g], greedy_reference(boxes[g], valid[g], t), err_msg=f"group {g}")
    assert 0 < got.sum() < valid.sum()


def test_nms_keep_long_suppression_chain() -> None:
    # Unit squares shifted by 0.3: each overlaps the next (IoU 0.54 > 0.45) but not the one after
    # (IoU 0.25). Greedy keeps every other box; the fixed point needs about K rounds to get there.
    k = 150
    x = np.arange(k, dtype=np.float32) * np.float32(0.3)
    boxes = np.stack([x, np.zeros(k), x + 1, np.ones(k)], -1).astype(np.float32)
    keep = nms_keep(boxes[None], np.ones((1, k), bool), 0.45)[0]
    np.testing.assert_array_equal(keep, np.arange(k) % 2 == 0)
    np.testing.assert_array_equal(keep, greedy_reference(boxes, np.ones(k, bool), 0.45))


def test_nms_keep_padding_neither_kept_nor_suppressing() -> None:
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0.05, 0, 1.05, 1]], np.float32)
    # The first (best) box is padding: the other two behave as if it were absent.
    keep = nms_keep(boxes, np.array([False, True, True]), 0.45)
    np.testing.assert_array_equal(keep, [False, True, False])


def test_nms_keep_nan_box_suppresses_like_ssd_pytorch() -> None:
    # ssd.pytorch drops a box unless IoU <= t; a NaN IoU is not <= t, so a kept NaN box removes
    # every later box, and a NaN box after a kept one is removed.
    far = [[5, 5, 6, 6]]
    nan = [[np.nan, 0, 1, 1]]
    boxes = np.array(nan + [[0, 0, 1, 1]] + far, np.float32)
    np.testing.assert_array_equal(nms_keep(boxes, np.ones(3, bool), 0.45), [True, False, False])
    boxes = np.array([[0, 0, 1, 1]] + nan + far, np.float32)
    np.testing.assert_array_equal(nms_keep(boxes, np.ones(3, bool), 0.45), [True, False, True])


def test_nms_keep_threshold_is_strict() -> None:
    # Unit boxes overlapping by half: inter 0.5, union 1.5, IoU 1/3 (as float32 computes it).
    boxes = np.array([[0, 0, 1, 1], [0.5, 0, 1.5, 1]], np.float32)
    t = float(np.float32(0.5) / np.float32(1.5))
    np.testing.assert_array_equal(nms_keep(boxes, np.ones(2, bool), t), [True, True])
    np.testing.assert_array_equal(nms_keep(boxes, np.ones(2, bool), t * 0.999), [True, False])


def test_nms_keep_empty_and_leading_dims() -> None:
    assert nms_keep(np.zeros((3, 0, 4), np.float32), np.zeros((3, 0), bool), 0.5).shape == (3, 0)
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, (2, 3, 20), spread=0.5)
    valid = np.ones((2, 3, 20), bool)
    got = nms_keep(boxes, valid, 0.5)
    assert got.shape == (2, 3, 20)
    np.testing.assert_array_equal(got[1, 2], greedy_reference(boxes[1, 2], valid[1, 2], 0.5))


def test_nms_orders_by_score() -> None:
    rng = np.random.default_rng(6)
    boxes = random_boxes(rng, (40,), spread=0.5)
    scores = rng.permutation(40).astype(np.float32)
    got = nms(boxes, scores, 0.5)
    order = np.argsort(-scores)
    want = order[greedy_reference(boxes[order], np.ones(40, bool), 0.5)]
    np.testing.assert_array_equal(got, want)
    assert (np.diff(scores[got]) < 0).all()


def test_nms_keep_degenerate_boxes_follow_ssd_pytorch() -> None:
    # Zero-area boxes: inter 0 and union 0 give IoU NaN, which ssd.pytorch treats as "not <= t".
    # So the first one drops every later zero-area box, overlapping (the second) or far away.
    boxes = np.array([[0, 0.5, 1, 0.5], [0.2, 0.7, 1.2, 0.7], [3, 3, 3, 3]], np.float32)
    np.testing.assert_array_equal(nms_keep(boxes, np.ones(3, bool), 0.45), [True, False, False])
    np.testing.assert_array_equal(
        nms_keep(boxes, np.ones(3, bool), 0.45), greedy_reference(boxes, np.ones(3, bool), 0.45)
    )


def test_nms_keep_many_sets_in_chunks() -> None:
    # More sets than fit one suppression matrix: processed in chunks, same answers.
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, (70, 180), spread=0.5)
    valid = rng.random((70, 180)) < 0.95
    got = nms_keep(boxes, valid, 0.5)
    for g in (0, 33, 64, 69):
        np.testing.assert_array_equal(got[g], greedy_reference(boxes[g], valid[g], 0.5))


def test_nan_iou_rule_of_both_libraries():
    from ssd_deploy.ops.boxes import nms_keep

    # Two empty boxes (clipped onto the image border): IoU 0/0 = NaN. ssd.pytorch drops the second
    # (its filter keeps only IoU <= t), torchvision's nms keeps it (it drops only IoU > t).
    boxes = np.array([[1.0, 0.2, 1.0, 0.3], [1.0, 0.5, 1.0, 0.6], [0.1, 0.1, 0.4, 0.4]], np.float32)
    valid = np.ones(3, bool)
    assert nms_keep(boxes, valid, 0.45).tolist() == [True, False, True]
    assert nms_keep(boxes, valid, 0.45, nan_suppresses=False).tolist() == [True, True, True]


def test_decode_wh_clamp():
    from ssd_deploy.ops.boxes import decode

    priors = np.array([[0.5, 0.5, 0.1, 0.2]], np.float32)
    loc = np.array([[0.0, 0.0, 30.0, -30.0]], np.float32)
    clamp = float(np.log(1000 / 16))
    box = decode(loc, priors, (0.1, 0.2), wh_clamp=clamp)[0]
    # w: 30 * 0.2 = 6 > clamp -> 0.1 * 62.5; h: -6 is below the cap, untouched.
    assert box[2] - box[0] == pytest.approx(0.1 * 62.5, rel=1e-6)
    assert box[3] - box[1] == pytest.approx(0.2 * np.exp(-6.0), rel=1e-3)  # float32 corners near 0.5
    unclamped = decode(loc, priors, (0.1, 0.2))[0]
    assert unclamped[2] - unclamped[0] == pytest.approx(0.1 * np.exp(6.0), rel=1e-5)
