"""End-to-end graphs (ssd_deploy.endtoend) against the numpy Detect on ONNX Runtime, ties included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ssd_deploy.config import DetectParams, preset
from ssd_deploy.contract import (
    CONFIG_KEY,
    DETECTIONS,
    END_TO_END_KEY,
    END_TO_END_ROW_ORDER,
    NUM_DETECTIONS,
)  # fmt: skip
from ssd_deploy.endtoend import EndToEndError, add_end_to_end, check_end_to_end, read_end_to_end
from ssd_deploy.postprocess import detect

ort = pytest.importorskip("onnxruntime")


def passthrough_model(path: Path, priors: np.ndarray, num_classes: int, params: DetectParams) -> Path:
    """An 'ssd_deploy ONNX' whose loc/conf are its inputs, so tests choose them (ties, empties)."""
    p = priors.shape[0]
    cfg = preset("voc300", num_classes=num_classes, detect=params)
    nodes = [
        helper.make_node("Identity", ["loc_in"], ["loc"]),
        helper.make_node("Identity", ["conf_in"], ["conf"]),
        helper.make_node("Identity", ["priors_table"], ["priors"]),
    ]
    graph = helper.make_graph(
        nodes, "passthrough",
        [helper.make_tensor_value_info("loc_in", TensorProto.FLOAT, ["batch", p, 4]),
         helper.make_tensor_value_info("conf_in", TensorProto.FLOAT, ["batch", p, num_classes])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", p, 4]),
         helper.make_tensor_value_info("conf", TensorProto.FLOAT, ["batch", p, num_classes]),
         helper.make_tensor_value_info("priors", TensorProto.FLOAT, [p, 4])],
        [numpy_helper.from_array(priors.astype(np.float32), "priors_table")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, cfg.to_json()
    onnx.save(model, str(path))
    return path


def random_priors(rng: np.random.Generator, p: int) -> np.ndarray:
    return np.concatenate([rng.uniform(0.1, 0.9, (p, 2)), rng.uniform(0.05, 0.4, (p, 2))], 1).astype(
        np.float32
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def run_e2e(path: Path, loc: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dets, num = sess.run([DETECTIONS, NUM_DETECTIONS], {"loc_in": loc, "conf_in": conf})
    return dets, num


def assert_same_as_numpy(dets: np.ndarray, num: np.ndarray, ref: list) -> None:
    """Same detections, and the same order once rows are stably sorted by descending score (the
    numpy Detect's own order); scores within 1e-6, boxes within 1e-5; zero padding after."""
    assert dets.dtype == np.float32 and num.dtype == np.int32
    assert dets.shape[0] == num.shape[0] == len(ref)
    for i, r in enumerate(ref):
        n = int(num[i])
        assert n == len(r), f"image {i}: {n} in-graph vs {len(r)} numpy detections"
        rows = dets[i, :n]
        assert not dets[i, n:].any(), "rows after num_detections must be zero"
        # Rows are class-major with descending score inside a class.
        cls = rows[:, 5]
        assert np.all(np.diff(cls) >= 0)
        same_class = np.diff(cls) == 0
        assert np.all(np.diff(rows[:, 4])[same_class] <= 0)
        order = np.argsort(-rows[:, 4], kind="stable")
        np.testing.assert_array_equal(rows[order, 5].astype(np.int64), r.class_ids)
        np.testing.assert_allclose(rows[order, 4], r.scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(rows[order, :4], r.boxes, rtol=0, atol=1e-5)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("rounding", [None, 2])
@pytest.mark.parametrize("tie_margin", [0, 32])
def test_random_heads_equal_numpy_detect(tmp, batch, rounding, tie_margin):
    rng = np.random.default_rng(batch * 10 + (rounding or 0))
    p, c = 500, 21
    params = DetectParams(conf_thresh=0.05, nms_thresh=0.45, top_k=30)
    priors = random_priors(rng, p)
    src = passthrough_model(tmp / "m.onnx", priors, c, params)
    spec = add_end_to_end(src, tmp / "e2e.onnx", tie_margin=tie_margin)
    assert spec.max_detections == 20 * 30 and spec.tie_margin == tie_margin
    loc = rng.normal(0, 1, (batch, p, 4)).astype(np.float32)
    conf = softmax(rng.normal(0, 2, (batch, p, c)))
    if rounding is not None:  # many exactly equal scores: ties at the top_k cut and inside NMS
        conf = np.round(conf, rounding).astype(np.float32)
    dets, num = run_e2e(tmp / "e2e.onnx", loc, conf)
    assert dets.shape == (batch, 600, 6)
    assert_same_as_numpy(dets, num, detect(loc, conf, priors, (0.1, 0.2), params))


@pytest.mark.parametrize("tie_margin", [0, 32])
def test_equal_scores_resolved_by_prior_index_at_cut_and_in_nms(tmp, tie_margin):
    """50 priors, one class, all with the same score, top_k 10: the numpy Detect takes priors 0..9
    (stable by prior index) and NMS keeps the lower index of each overlapping equal-score pair."""
    p = 50
    # Pairs (2i, 2i+1) overlap heavily (IoU ~0.8); pairs are far apart from each other.
    cx = np.repeat(np.linspace(0.05, 0.95, p // 2), 2)
    cx[1::2] += 0.01
    priors = np.stack([cx, np.full(p, 0.5), np.full(p, 0.05), np.full(p, 0.05)], 1).astype(np.float32)
    params = DetectParams(conf_thresh=0.01, nms_thresh=0.45, top_k=10)
    src = passthrough_model(tmp / "m.onnx", priors, 2, params)
    add_end_to_end(src, tmp / "e2e.onnx", tie_margin=tie_margin)
    loc = np.zeros((1, p, 4), np.float32)
    conf = np.zeros((1, p, 2), np.float32)
    conf[..., 1] = 0.5
    conf[..., 0] = 0.5
    dets, num = run_e2e(tmp / "e2e.onnx", loc, conf)
    ref = detect(loc, conf, priors, (0.1, 0.2), params)
    assert len(ref[0]) == 5  # priors 0, 2, 4, 6, 8
    assert_same_as_numpy(dets, num, ref)
    np.testing.assert_allclose(dets[0, :5, 0], priors[[0, 2, 4, 6, 8], 0] - 0.025, atol=1e-6)


def test_iou_equal_to_threshold_does_not_suppress(tmp):
    """IoU exactly 0.5 with nms_thresh 0.5: kept in both (suppression needs IoU > threshold)."""
    # Boxes [0,0,1,1] and [0,0,1,2] (as cx, cy, w, h): intersection 1, union 2, IoU exactly 0.5.
    priors = np.array([[0.5, 0.5, 1.0, 1.0], [0.5, 1.0, 1.0, 2.0], [0.5, 1.0, 1.0, 1.8]], np.float32)
    params = DetectParams(conf_thresh=0.01, nms_thresh=0.5, top_k=10)
    src = passthrough_model(tmp / "m.onnx", priors, 2, params)
    add_end_to_end(src, tmp / "e2e.onnx")
    loc = np.zeros((1, 3, 4), np.float32)
    conf = np.array([[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]], np.float32)
    dets, num = run_e2e(tmp / "e2e.onnx", loc, conf)
    ref = detect(loc, conf, priors, (0.1, 0.2), params)
    # Box 2 (IoU == 0.5 with box 1) stays and then suppresses box 3 (IoU 0.9 with box 2).
    np.testing.assert_array_equal(ref[0].scores, np.float32([0.9, 0.8]))
    assert_same_as_numpy(dets, num, ref)


def test_images_without_detections_and_mixed_batch(tmp):
    rng = np.random.default_rng(3)
    p, c = 200, 4
    priors = random_priors(rng, p)
    params = DetectParams(conf_thresh=0.3, nms_thresh=0.45, top_k=15)
    src = passthrough_model(tmp / "m.onnx", priors, c, params)
    add_end_to_end(src, tmp / "e2e.onnx")
    loc = rng.normal(0, 1, (3, p, 4)).astype(np.float32)
    conf = softmax(rng.normal(0, 3, (3, p, c)))
    conf[1] = 0.25  # below conf_thresh everywhere: no detection
    conf[2, :, 1:] = 0.0
    conf[2, :, 0] = 1.0  # only background
    dets, num = run_e2e(tmp / "e2e.onnx", loc, conf)
    assert num[1] == 0 and num[2] == 0 and num[0] > 0
    assert_same_as_numpy(dets, num, detect(loc, conf, priors, (0.1, 0.2), params))


@pytest.mark.parametrize("cap", [1, 7, 40])
def test_keep_top_k_caps_by_score_with_ties(tmp, cap):
    rng = np.random.default_rng(cap)
    p, c = 300, 6
    priors = random_priors(rng, p)
    params = DetectParams(conf_thresh=0.05, nms_thresh=0.45, top_k=20, keep_top_k=cap)
    src = passthrough_model(tmp / "m.onnx", priors, c, params)
    spec = add_end_to_end(src, tmp / "e2e.onnx")
    assert spec.max_detections == min(cap, 5 * 20)
    loc = rng.normal(0, 1, (2, p, 4)).astype(np.float32)
    conf = np.round(softmax(rng.normal(0, 2, (2, p, c))), 2).astype(np.float32)
    dets, num = run_e2e(tmp / "e2e.onnx", loc, conf)
    assert dets.shape == (2, spec.max_detections, 6)
    assert_same_as_numpy(dets, num, detect(loc, conf, priors, (0.1, 0.2), params))


def test_background_label_other_than_zero_and_top_k_above_priors(tmp):
    rng = np.random.default_rng(5)
    p, c = 40, 3
    priors = random_priors(rng, p)
    params = DetectParams(conf_thresh=0.1, nms_thresh=0.3, top_k=200, background_label=2)
    src = passthrough_model(tmp / "m.onnx", priors, c, params)
    spec = add_end_to_end(src, tmp / "e2e.onnx")
    assert spec.top_k == p and spec.max_detections == 2 * p
    loc = rng.normal(0, 1, (2, p, 4)).astype(np.float32)
    conf = softmax(rng.normal(0, 2, (2, p, c)))
    dets, num = run_e2e(tmp / "e2e.onnx", loc, conf)
    assert_same_as_numpy(dets, num, detect(loc, conf, priors, (0.1, 0.2), params))
    assert set(np.unique(dets[:, :, 5])) <= {0.0, 1.0}  # class 2 is the background


def test_metadata_records_baked_params_and_keeps_raw_outputs(tmp):
    rng = np.random.default_rng(0)
    params = DetectParams(conf_thresh=0.2, nms_thresh=0.4, top_k=25, keep_top_k=100)
    src = passthrough_model(tmp / "m.onnx", random_priors(rng, 100), 21, params)
    add_end_to_end(src, tmp / "e2e.onnx")
    m = onnx.load(str(tmp / "e2e.onnx"))
    assert [o.name for o in m.graph.output] == ["loc", "conf", "priors", DETECTIONS, NUM_DETECTIONS]
    meta = {p.key: p.value for p in m.metadata_props}
    baked = json.loads(meta[END_TO_END_KEY])
    assert baked["row_order"] == END_TO_END_ROW_ORDER
    assert (baked["conf_thresh"], baked["nms_thresh"], baked["top_k"], baked["keep_top_k"]) == (
        0.2,
        0.4,
        25,
        100,
    )
    assert baked["max_detections"] == 100 and baked["columns"][4:] == ["score", "class_id"]
    assert read_end_to_end(meta).params == params
    ops = {n.op_type for n in m.graph.node if n.domain in ("", "ai.onnx")}
    assert "NonMaxSuppression" in ops and all(n.domain in ("", "ai.onnx") for n in m.graph.node)


def test_bad_input_is_one_error_and_nothing_written(tmp):
    rng = np.random.default_rng(0)
    pri = random_priors(rng, 4000)
    src = passthrough_model(tmp / "m.onnx", pri, 21, DetectParams(top_k=3840))
    with pytest.raises(EndToEndError, match="top_k up to 3839"):
        add_end_to_end(src, tmp / "out.onnx")
    assert not (tmp / "out.onnx").exists()
    src = passthrough_model(tmp / "m.onnx", pri, 201, DetectParams(top_k=400))
    with pytest.raises(EndToEndError, match="D <= 65536"):
        add_end_to_end(src, tmp / "out.onnx")
    assert not (tmp / "out.onnx").exists()
    # keep_top_k bounds D: 200 classes x 400 is fine with a cap.
    check_end_to_end(preset("voc300", num_classes=201), DetectParams(top_k=400, keep_top_k=200))
    ok = passthrough_model(tmp / "ok.onnx", pri[:50], 3, DetectParams(top_k=5))
    add_end_to_end(ok, tmp / "ok_e2e.onnx")
    before = (tmp / "ok_e2e.onnx").read_bytes()
    with pytest.raises(EndToEndError, match="already has the end-to-end outputs"):
        add_end_to_end(tmp / "ok_e2e.onnx", tmp / "twice.onnx")
    assert not (tmp / "twice.onnx").exists() and (tmp / "ok_e2e.onnx").read_bytes() == before


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_non_finite_box_is_not_suppressed_in_graph(tmp):
    """Documented difference (docs/end_to_end.md): a NaN box (exp overflow or NaN loc) is suppressed
    by an earlier kept box in the numpy Detect (NaN IoU counts as overlap, as in ssd.pytorch) but
    never by ONNX Runtime's NonMaxSuppression (NaN > threshold is false)."""
    priors = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]], np.float32)
    params = DetectParams(conf_thresh=0.01, nms_thresh=0.45, top_k=10)
    add_end_to_end(passthrough_model(tmp / "m.onnx", priors, 2, params), tmp / "e2e.onnx")
    conf = np.array([[[0.1, 0.9], [0.2, 0.8], [0.4, 0.6]]], np.float32)
    for bad in (np.inf, np.nan):
        loc = np.zeros((1, 3, 4), np.float32)
        loc[0, 1, 2] = bad  # prior 1's width becomes inf (-> x2 NaN) or NaN
        dets, num = run_e2e(tmp / "e2e.onnx", loc, conf)
        ref = detect(loc, conf, priors, (0.1, 0.2), params)[0]
        np.testing.assert_array_equal(ref.scores, np.float32([0.9, 0.6]))
        assert num[0] == 3
        np.testing.assert_array_equal(dets[0, :3, 4], np.float32([0.9, 0.8, 0.6]))
        assert np.isnan(dets[0, 1, 2]) and np.isfinite(dets[0, [0, 2], :4]).all()


def test_tie_margin_off_where_the_float32_key_would_not_be_exact():
    cfg = preset("voc300")  # 8732 priors
    assert check_end_to_end(cfg, DetectParams(top_k=200)).tie_margin == 32
    # (2000 + 32) x 8732 > 2^24: run x P + index would not be exact in float32.
    assert check_end_to_end(cfg, DetectParams(top_k=2000)).tie_margin == 0


@pytest.mark.parametrize("baked_cap", [None, 30])
def test_stricter_requests_filtered_from_the_graph_equal_numpy(tmp, baked_cap):
    """What Detector does on a stricter request: filter the graph's rows (in_graph_kept)."""
    from ssd_deploy.runtime.in_graph import in_graph_kept, in_graph_mismatch, kept_as_list

    rng = np.random.default_rng(7)
    p, c = 400, 5
    priors = random_priors(rng, p)
    baked = DetectParams(conf_thresh=0.05, nms_thresh=0.45, top_k=25, keep_top_k=baked_cap)
    spec = add_end_to_end(passthrough_model(tmp / "m.onnx", priors, c, baked), tmp / "e2e.onnx")
    loc = rng.normal(0, 1, (3, p, 4)).astype(np.float32)
    conf = np.round(softmax(rng.normal(0, 2, (3, p, c))), 2).astype(np.float32)
    dets, num = run_e2e(tmp / "e2e.onnx", loc, conf)
    for changes in ({"conf_thresh": 0.2}, {"keep_top_k": 10}, {"conf_thresh": 0.12, "keep_top_k": 4}):
        params = baked.replace(**{"keep_top_k": baked_cap, **changes})
        assert in_graph_mismatch(spec, params, p) is None
        got = kept_as_list(in_graph_kept(dets, num, params, spec), 3)
        ref = detect(loc, conf, priors, (0.1, 0.2), params)
        for g, r in zip(got, ref):  # same order, not just the same set
            np.testing.assert_array_equal(g.class_ids, r.class_ids)
            np.testing.assert_allclose(g.scores, r.scores, rtol=0, atol=1e-6)
            np.testing.assert_allclose(g.boxes, r.boxes, rtol=0, atol=1e-5)
    assert in_graph_mismatch(spec, baked.replace(conf_thresh=0.01, keep_top_k=baked_cap), p)
