"""ssd_deploy.postprocess (numpy decode + Detect) against the torch reference Detect.

The two must agree as matched sets: same class, same score (1e-6), IoU ~ 1. To make that an exact
statement rather than a statistical one, the heads are built so that both sides compute the same
bits: scores within an image are all distinct (ties are tested separately, comparing only what the
semantics determine), and the width/height offsets come from a grid of values where numpy's and
torch's float32 ``exp`` agree (they differ in the last bit for ~40 % of inputs, which could flip an
IoU that sits right at the threshold). Everything else in decode and IoU is exactly rounded
arithmetic done in the same order on both sides.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ssd_deploy.config import DetectParams, preset
from ssd_deploy.postprocess import Detections, detect, detect_array
from ssd_deploy.priors import prior_boxes

torch = pytest.importorskip("torch")
# ssd_deploy.model imports torch: only after importorskip, so the module skips without it.
from ssd_deploy.model.detect import decode_reference, detect_reference  # noqa: E402

VAR = (0.1, 0.2)

#: Every test here runs on the numba kernels and on the numpy path (conftest.runtime_path).
pytestmark = pytest.mark.usefixtures("runtime_path")


@pytest.fixture(scope="module")
def priors300() -> np.ndarray:
    return prior_boxes(preset("voc300").prior)


@pytest.fixture(scope="module")
def priors512() -> np.ndarray:
    return prior_boxes(preset("voc512").prior)


@pytest.fixture(scope="module")
def wh_grid() -> np.ndarray:
    """Offsets whose decode is bit-identical in numpy and torch."""
    grid = (np.arange(-40, 41, dtype=np.float32) / np.float32(16)).astype(np.float32)
    ours = np.exp(grid * np.float32(VAR[1]))
    theirs = torch.exp(torch.from_numpy(grid) * VAR[1]).numpy()
    agree = grid[ours == theirs]
    if agree.size < 8:
        pytest.skip(f"numpy and torch float32 exp agree on only {agree.size} grid values here")
    return agree


def make_heads(
    rng: np.random.Generator,
    priors: np.ndarray,
    wh_grid: np.ndarray,
    num_classes: int,
    batch: int,
    kind: str,
    thresh: float = 0.01,
    background: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(loc, conf)`` with all scores above ``thresh`` distinct within each image.

    ``peaky``: per class 0-80 candidates, clustered around a few points so that NMS has work;
    ``flat``: every (prior, class) is a candidate, so top_k cuts every class;
    ``mixed``: like peaky plus a few classes with hundreds to thousands of candidates.
    Scores need not sum to one per prior: Detect never looks at the sum.
    """
    p = priors.shape[0]
    loc = np.empty((batch, p, 4), np.float32)
    loc[..., :2] = rng.normal(0.0, 0.5, (batch, p, 2))
    loc[..., 2:] = rng.choice(wh_grid, (batch, p, 2))
    conf = rng.uniform(0.0, thresh * 0.99, (batch, p, num_classes)).astype(np.float32)
    for b in range(batch):
        picks = []
        for cl in range(num_classes):
            if cl == background:
                continue
            if kind == "flat":
                picks.append(np.arange(p) * num_classes + cl)
                continue
            n = int(rng.integers(0, 81))
            if kind == "mixed" and rng.random() < 0.3:
                n = int(rng.integers(250, 3000))
            centres = rng.uniform(0, 1, (int(rng.integers(1, 4)), 2))
            dist = np.min(np.linalg.norm(priors[:, None, :2] - centres[None], axis=-1), axis=1)
            chosen = np.argsort(dist)[:n]
            picks.append(chosen * num_classes + cl)
        flat_idx = np.concatenate(picks)
        # Distinct float32 values spaced far above their ulp, in random order.
        values = np.linspace(thresh + 0.001, 0.999, flat_idx.size, dtype=np.float64).astype(np.float32)
        assert np.unique(values).size == values.size
        conf[b].reshape(-1)[flat_idx] = rng.permutation(values)
    return loc, conf


def reference(loc: np.ndarray, conf: np.ndarray, priors: np.ndarray, params: DetectParams) -> np.ndarray:
    out = detect_reference(
        torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(priors), VAR, params
    )
    return out.numpy()


def unmatched(ours: Detections, ref_rows: np.ndarray) -> int:
    """Detections of one image without a partner: same class, score within 1e-6, IoU > 1 - 1e-6."""
    bad = 0
    for cl in range(ref_rows.shape[0]):
        rows = ref_rows[cl][ref_rows[cl, :, 0] > 0]
        mine = ours.class_ids == cl
        boxes, scores = ours.boxes[mine].astype(np.float64), ours.scores[mine]
        used = np.zeros(len(scores), bool)
        for score, *box in rows.astype(np.float64):
            cand = np.flatnonzero(~used & (np.abs(scores - score) <= 1e-6))
            w = np.clip(np.minimum(boxes[cand, 2], box[2]) - np.maximum(boxes[cand, 0], box[0]), 0, None)
            h = np.clip(np.minimum(boxes[cand, 3], box[3]) - np.maximum(boxes[cand, 1], box[1]), 0, None)
            inter = w * h
            union = (
                (boxes[cand, 2] - boxes[cand, 0]) * (boxes[cand, 3] - boxes[cand, 1])
                + ((box[2] - box[0]) * (box[3] - box[1]))
                - inter
            )
            hit = cand[inter / union > 1 - 1e-6]
            if hit.size:
                used[hit[0]] = True
            else:
                bad += 1
        bad += int((~used).sum())
    return bad


def check_detections_shape(dets: list[Detections], num_classes: int, background: int = 0) -> None:
    for d in dets:
        assert d.boxes.dtype == np.float32 and d.boxes.shape == (len(d), 4)
        assert d.scores.dtype == np.float32 and d.class_ids.dtype == np.int64
        assert (np.diff(d.scores) <= 0).all(), "not sorted by descending score"
        assert ((d.class_ids >= 0) & (d.class_ids < num_classes) & (d.class_ids != background)).all()


CASES = [
    # size, kind, batch, params
    (300, "peaky", 3, DetectParams()),
    (300, "flat", 2, DetectParams()),
    (300, "flat", 1, DetectParams(keep_top_k=200)),
    (300, "mixed", 2, DetectParams(conf_thresh=0.05, nms_thresh=0.3, top_k=50, keep_top_k=60)),
    (300, "mixed", 1, DetectParams(nms_thresh=0.6, top_k=400)),
    (512, "peaky", 2, DetectParams(keep_top_k=200)),
    (512, "flat", 1, DetectParams()),
    (512, "mixed", 2, DetectParams(conf_thresh=0.2, nms_thresh=0.5, top_k=100)),
    # torchvision's post-process; the clamp is set low so that the grid's offsets hit it.
    (
        300,
        "mixed",
        2,
        DetectParams(top_k=400, keep_top_k=200, clip_boxes=True, wh_clamp=0.25, nms_nan_suppresses=False),
    ),
    (300, "peaky", 2, DetectParams(clip_boxes=True)),
]


@pytest.mark.parametrize(
    "size,kind,batch,params", CASES, ids=[f"{c[0]}-{c[1]}-b{c[2]}-{i}" for i, c in enumerate(CASES)]
)
def test_matches_reference(
    size: int, kind: str, batch: int, params: DetectParams, priors300: np.ndarray, priors512: np.ndarray,
    wh_grid: np.ndarray,
) -> None:  # fmt: skip
    priors = priors300 if size == 300 else priors512
    rng = np.random.default_rng(size + batch + len(kind) + params.top_k)
    loc, conf = make_heads(rng, priors, wh_grid, 21, batch, kind, params.conf_thresh)
    ref = reference(loc, conf, priors, params)
    dets = detect(loc, conf, priors, VAR, params)
    assert len(dets) == batch
    check_detections_shape(dets, 21)
    for b in range(batch):
        n_ref = int((ref[b, :, :, 0] > 0).sum())
        assert len(dets[b]) == n_ref
        assert unmatched(dets[b], ref[b]) == 0, f"image {b}"
        if params.keep_top_k is not None:
            assert n_ref <= params.keep_top_k
    total = sum(len(d) for d in dets)
    assert total > 0
    if kind == "flat" and params.keep_top_k is None:
        # Every class was cut at top_k and NMS removed only part of each.
        per_class = (ref[..., 0] > 0).sum(-1)[:, 1:]
        assert (per_class > 0).all() and (per_class < params.top_k).all()


def test_custom_background_label(priors300: np.ndarray, wh_grid: np.ndarray) -> None:
    params = DetectParams(background_label=3)
    rng = np.random.default_rng(7)
    loc, conf = make_heads(rng, priors300, wh_grid, 6, 2, "mixed", background=3)
    conf[:, :, 3] = 0.5  # would dominate if it were not skipped
    ref = reference(loc, conf, priors300, params)
    dets = detect(loc, conf, priors300, VAR, params)
    check_detections_shape(dets, 6, background=3)
    assert (ref[:, 3] == 0).all() and (ref[:, 0, :, 0] > 0).any()
    for b in range(2):
        assert unmatched(dets[b], ref[b]) == 0


def test_detect_array_layout(priors300: np.ndarray, wh_grid: np.ndarray) -> None:
    params = DetectParams(keep_top_k=120)
    rng = np.random.default_rng(8)
    loc, conf = make_heads(rng, priors300, wh_grid, 21, 2, "mixed")
    arr = detect_array(loc, conf, priors300, VAR, params)
    dets = detect(loc, conf, priors300, VAR, params)
    assert arr.shape == (2, 21, params.top_k, 5) and arr.dtype == np.float32
    assert (arr[:, 0] == 0).all()
    for b in range(2):
        rebuilt = []
        for cl in range(21):
            scores = arr[b, cl, :, 0]
            n = int((scores > 0).sum())
            assert (scores[:n] > 0).all() and (arr[b, cl, n:] == 0).all(), "rows not packed at the top"
            assert (np.diff(scores[:n]) < 0).all(), "rows not in descending order"
            rebuilt += [(cl, *row) for row in arr[b, cl, :n]]
        mine = sorted(
            (int(lab), float(s), *map(float, box))
            for lab, s, box in zip(dets[b].class_ids, dets[b].scores, dets[b].boxes)
        )
        assert sorted(tuple(map(float, r)) for r in rebuilt) == mine
    # Same numbers as the reference, row for row (all scores distinct, so rows are determined).
    np.testing.assert_array_equal(arr, reference(loc, conf, priors300, params))


def test_ties_at_the_top_k_cut(priors300: np.ndarray) -> None:
    """100 equal scores straddle the top_k=200 cut after 150 higher ones: which 50 of the tied
    candidates are taken is not defined, but how many detections come out, and the detections
    above the tie, are."""
    k, tie = 200, np.float32(0.3)
    loc = np.zeros((1, priors300.shape[0], 4), np.float32)
    conf = np.zeros((1, priors300.shape[0], 3), np.float32)

    # First layer: 38x38 cells x 4 anchors, anchor 0 a 0.1-wide square. Tied boxes on cells
    # (4i, 4j) are disjoint; the 150 higher ones sit on the anchors 0 and 1 of cells (4i+2, 4j+2),
    # which overlap each other (IoU 0.5) but a tied box only a little (IoU < 0.2).
    def cell(i: int, j: int) -> int:
        return (i * 38 + j) * 4

    tied = [cell(4 * i, 4 * j) for i in range(10) for j in range(10)]
    high = [cell(4 * i + 2, 4 * j + 2) + a for i in range(9) for j in range(9) for a in (0, 1)][:150]
    conf[0, tied, 1] = tie
    conf[0, high, 1] = np.linspace(0.9, 0.31, 150, dtype=np.float32)
    conf[0, tied, 2] = 0.2  # class 2: the same tied set, all of it below top_k: fully determined
    params = DetectParams(top_k=k)
    ref = reference(loc, conf, priors300, params)
    dets = detect(loc, conf, priors300, VAR, params)[0]
    for cl in (1, 2):
        ref_rows = ref[0, cl][ref[0, cl, :, 0] > 0]
        mine = dets.class_ids == cl
        assert mine.sum() == len(ref_rows)
        above_ref = ref_rows[ref_rows[:, 0] > tie]
        above_mine = np.c_[dets.scores[mine], dets.boxes[mine]][dets.scores[mine] > tie]
        np.testing.assert_array_equal(above_mine, above_ref)
    # Class 1: every tied box picked survives NMS; exactly k - 150 of them were picked.
    assert int(((dets.class_ids == 1) & (dets.scores == tie)).sum()) == k - 150
    assert int(((ref[0, 1, :, 0]) == tie).sum()) == k - 150
    assert int((dets.class_ids == 2).sum()) == 100
    # The picked tied boxes are tied candidates (decoded exactly at their priors).
    corners = np.c_[
        priors300[tied, :2] - priors300[tied, 2:] / 2, priors300[tied, :2] + priors300[tied, 2:] / 2
    ]
    picked = dets.boxes[(dets.class_ids == 1) & (dets.scores == tie)]
    assert all(np.isclose(corners, box, atol=1e-6).all(1).any() for box in picked)


def test_ties_at_the_keep_top_k_cut(priors300: np.ndarray) -> None:
    """The per-image cap falls inside a run of equal scores across classes: the count and the
    detections above the tie are determined."""
    p = priors300.shape[0]
    loc = np.zeros((1, p, 4), np.float32)
    conf = np.zeros((1, p, 4), np.float32)
    cells = [(4 * i * 38 + 4 * j) * 4 for i in range(10) for j in range(10)]  # disjoint boxes
    conf[0, cells[:30], 1] = np.linspace(0.9, 0.6, 30, dtype=np.float32)
    conf[0, cells[30:60], 2] = np.float32(0.5)
    conf[0, cells[60:90], 3] = np.float32(0.5)
    params = DetectParams(keep_top_k=45)
    ref = reference(loc, conf, priors300, params)
    dets = detect(loc, conf, priors300, VAR, params)[0]
    assert len(dets) == 45 and int((ref[0, :, :, 0] > 0).sum()) == 45
    assert int((dets.scores == np.float32(0.5)).sum()) == 15
    np.testing.assert_array_equal(np.sort(dets.scores[dets.scores > 0.5]), np.sort(ref[0, 1, :30, 0]))
    assert (dets.class_ids[dets.scores > 0.5] == 1).all()


def test_threshold_is_strict(priors300: np.ndarray) -> None:
    p = priors300.shape[0]
    conf = np.zeros((1, p, 2), np.float32)
    t = np.float32(0.3)
    conf[0, 0, 1] = t  # equal to the threshold: not a candidate
    conf[0, 5000, 1] = np.nextafter(t, np.float32(1))
    loc = np.zeros((1, p, 4), np.float32)
    params = DetectParams(conf_thresh=0.3)
    dets = detect(loc, conf, priors300, VAR, params)[0]
    assert len(dets) == 1 and dets.scores[0] > t
    assert int((reference(loc, conf, priors300, params)[..., 0] > 0).sum()) == 1


def test_nan_offsets_follow_the_reference(priors300: np.ndarray, wh_grid: np.ndarray) -> None:
    rng = np.random.default_rng(9)
    loc, conf = make_heads(rng, priors300, wh_grid, 4, 1, "peaky")
    cand = np.flatnonzero(conf[0, :, 1] > 0.01)
    loc[0, cand[::7], 0] = np.nan  # some class-1 candidates decode to NaN boxes
    params = DetectParams()
    got = detect_array(loc, conf, priors300, VAR, params)
    np.testing.assert_array_equal(got, reference(loc, conf, priors300, params))  # NaN == NaN here


def test_empty_inputs(priors300: np.ndarray) -> None:
    p = priors300.shape[0]
    loc = np.zeros((2, p, 4), np.float32)
    conf = np.full((2, p, 21), 0.005, np.float32)
    dets = detect(loc, conf, priors300)
    assert [len(d) for d in dets] == [0, 0]
    assert dets[0].boxes.shape == (0, 4)
    assert not detect_array(loc, conf, priors300).any()
    assert detect(loc[:0], conf[:0], priors300) == []


def test_shape_errors(priors300: np.ndarray) -> None:
    p = priors300.shape[0]
    with pytest.raises(ValueError, match="loc"):
        detect(np.zeros((1, p, 5)), np.zeros((1, p, 21)), priors300)
    with pytest.raises(ValueError, match="priors"):
        detect(np.zeros((1, p - 1, 4)), np.zeros((1, p - 1, 21)), priors300)
    with pytest.raises(ValueError, match="conf"):
        detect(np.zeros((p, 4)), np.zeros((p, 21)), priors300)


def test_decode_matches_reference_bitwise(priors300: np.ndarray, wh_grid: np.ndarray) -> None:
    from ssd_deploy.ops.boxes import decode

    rng = np.random.default_rng(10)
    loc = np.c_[rng.normal(0, 1, (priors300.shape[0], 2)), rng.choice(wh_grid, (priors300.shape[0], 2))]
    loc = loc.astype(np.float32)
    ref = decode_reference(torch.from_numpy(loc), torch.from_numpy(priors300), VAR).numpy()
    np.testing.assert_array_equal(decode(loc, priors300, VAR), ref)


def test_thread_safe(priors300: np.ndarray, wh_grid: np.ndarray) -> None:
    rng = np.random.default_rng(11)
    inputs = [
        make_heads(rng, priors300, wh_grid, 21, 1, kind) for kind in ("peaky", "flat", "mixed", "mixed")
    ]
    want = [detect_array(loc, conf, priors300) for loc, conf in inputs]
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(len(inputs))}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                got[i].append(detect_array(*inputs[i], priors300))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, results in got.items():
        for r in results:
            np.testing.assert_array_equal(r, want[i])


def test_scaled_detections() -> None:
    d = Detections(np.array([[0.1, 0.2, 0.5, 1.0]], np.float32), np.array([0.9], np.float32), np.array([3]))
    s = d.scaled(200, 100)
    np.testing.assert_allclose(s.boxes, [[20, 20, 100, 100]])
    assert s.scores is d.scores and len(s) == 1


def test_detect_both_equals_separate_calls():
    from ssd_deploy.postprocess import detect_both

    rng = np.random.default_rng(7)
    cfg = preset("voc300")
    pri = prior_boxes(cfg.prior)
    loc = rng.normal(0, 1, (2, cfg.num_priors, 4)).astype(np.float32)
    logits = rng.normal(0, 3, (2, cfg.num_priors, cfg.num_classes)).astype(np.float32)
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    lst, arr = detect_both(loc, conf, pri, cfg.variances, cfg.detect)
    ref_list = detect(loc, conf, pri, cfg.variances, cfg.detect)
    np.testing.assert_array_equal(arr, detect_array(loc, conf, pri, cfg.variances, cfg.detect))
    assert len(lst) == len(ref_list) == 2
    for a, b in zip(lst, ref_list):
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_torchvision_options_change_the_result(priors300: np.ndarray, wh_grid: np.ndarray) -> None:
    """clip_boxes and wh_clamp are not no-ops: boxes stay in [0, 1] and sizes shrink."""
    rng = np.random.default_rng(12)
    loc, conf = make_heads(rng, priors300, wh_grid, 5, 1, "peaky")
    plain = detect(loc, conf, priors300, VAR, DetectParams())[0]
    clipped = detect(loc, conf, priors300, VAR, DetectParams(clip_boxes=True))[0]
    assert (
        (plain.boxes.min() < 0 or plain.boxes.max() > 1)
        and clipped.boxes.min() >= 0
        and clipped.boxes.max() <= 1
    )
    clamped = detect(loc, conf, priors300, VAR, DetectParams(wh_clamp=0.05))[0]
    ours = detect_array(loc, conf, priors300, VAR, DetectParams(wh_clamp=0.05))
    np.testing.assert_array_equal(
        ours[0, :, :, 0] > 0, reference(loc, conf, priors300, DetectParams(wh_clamp=0.05))[0, :, :, 0] > 0
    )
    widths = clamped.boxes[:, 2] - clamped.boxes[:, 0]
    assert widths.max() <= float(priors300[:, 2].max() * np.exp(0.05)) * (1 + 1e-6)
