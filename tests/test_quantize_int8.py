"""INT8 Q/DQ graphs: the placement and types TensorRT wants, weights, ranges, and the CPU flavour."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from quantize_models import tiny_ssd

from ssd_deploy.quantize.graph import GraphIndex
from ssd_deploy.quantize.int8 import build_int8, plan_int8, quantize_weights, share_pool_ranges, tensor_ranges
from ssd_deploy.quantize.ranges import collect_stats, compute_amax


@pytest.fixture(scope="module")
def photos(sample_paths, voc300):
    from ssd_deploy.preprocess import preprocess

    batch, _ = preprocess(sample_paths[:3], voc300)
    return batch


@pytest.fixture(scope="module")
def tiny_and_stats(photos):
    m = tiny_ssd()
    st = collect_stats(m, (photos[i : i + 1] for i in range(len(photos))), GraphIndex(m).float_activations())
    return m, st


def _build(m, st, exclude=(), method="minmax", target="tensorrt"):
    plan = plan_int8(m, exclude)
    amax = share_pool_ranges(m, plan, {t: compute_amax(st[t], method) for t in plan.activations})
    return plan, amax, build_int8(m, plan, amax, target=target)


def _init(m: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array({t.name: t for t in m.graph.initializer}[name])


def test_qdq_placement_and_types_are_what_tensorrt_wants(tiny_and_stats):
    m, st = tiny_and_stats
    plan, amax, q = _build(m, st)
    onnx.checker.check_model(q, full_check=True)
    idx = GraphIndex(q)
    convs = [n for n in idx.graph.node if n.op_type == "Conv"]
    assert len(convs) == 7 and len(plan.quantize) == 9  # 7 convs + 2 max-pools
    for node in idx.graph.node:
        if node.op_type in ("Conv", "MaxPool"):
            dq = idx.producer[node.input[0]]
            assert dq.op_type == "DequantizeLinear"
            qn = idx.producer[dq.input[0]]
            assert qn.op_type == "QuantizeLinear"
            zp = _init(q, qn.input[2])
            assert zp.dtype == np.int8 and zp.shape == () and zp == 0  # symmetric, per-tensor
            assert _init(q, qn.input[1]).shape == ()
        if node.op_type == "Conv":
            wdq = idx.producer[node.input[1]]
            assert wdq.op_type == "DequantizeLinear"
            assert {a.name: a.i for a in wdq.attribute}["axis"] == 0
            w_int, w_scale, w_zp = (_init(q, t) for t in wdq.input)
            assert w_int.dtype == np.int8 and w_scale.shape == (w_int.shape[0],) and not w_zp.any()
            assert int(np.abs(w_int).max()) == 127
            bias = node.input[2]
            assert bias in {t.name for t in q.graph.initializer}  # bias not quantized
            assert _init(q, bias).dtype == np.float32
    # Only Conv/pool inputs: the L2Norm reads the FP32 ReLU output, no Q/DQ on any other op's input.
    for node in idx.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "QuantizeLinear", "DequantizeLinear"):
            for t in node.input:
                p = idx.producer.get(t)
                assert p is None or p.op_type != "DequantizeLinear", (node.name, t)
    assert idx.nodes["node_l2_pow"].input[0] == "relu4_3"
    # FP32 weights that now live as INT8 are gone from the file.
    assert "ssd.vgg.3.weight" not in {t.name for t in q.graph.initializer}


def test_weight_quantization_is_symmetric_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, size=(5, 3, 3, 3)).astype(np.float32)
    w[1] *= 100.0  # one loud channel must not coarsen the others
    w[4] = 0.0
    q, s = quantize_weights(w)
    assert q.dtype == np.int8 and s.shape == (5,)
    np.testing.assert_allclose(s[:4], np.abs(w[:4]).reshape(4, -1).max(axis=1) / 127, rtol=1e-6)
    assert s[4] > 0 and not q[4].any()
    err = np.abs(q.astype(np.float32) * s[:, None, None, None] - w)
    assert (err <= s[:, None, None, None] / 2 + 1e-6).all()


def test_pool_output_shares_its_input_scale(tiny_and_stats):
    m, st = tiny_and_stats
    plan = plan_int8(m)
    amax = {t: compute_amax(st[t], "percentile") for t in plan.activations}
    assert amax["pool_a"] != amax["relu_a"]  # calibrated separately they differ ...
    shared = share_pool_ranges(m, plan, amax)
    assert shared["pool_a"] == shared["relu_a"] and shared["pool4"] == shared["relu4_3"]  # ... not any more
    assert shared["relu7"] == amax["relu7"]


def test_excluded_heads_stay_fp32(tiny_and_stats):
    m, st = tiny_and_stats
    plan, _, q = _build(m, st, exclude=["heads"])
    assert {r.node for r in plan.excluded} == {"node_loc0", "node_loc1", "node_conf0", "node_conf1"}
    assert all("--exclude heads" in r.reason for r in plan.excluded)
    idx = GraphIndex(q)
    for name in ("node_loc0", "node_conf1"):
        node = idx.nodes[name]
        assert node.input[1] in {t.name for t in q.graph.initializer}
        assert _init(q, node.input[1]).dtype == np.float32
        assert idx.producer[node.input[0]].op_type != "DequantizeLinear"
    assert "l2_out" not in plan.activations  # only the heads read it


def test_int8_outputs_track_fp32(tiny_and_stats, photos):
    m, st = tiny_and_stats
    _, _, q = _build(m, st, method="percentile")

    def run(model):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(["loc", "conf", "priors"], {"images": photos})

    ref, got = run(m), run(q)
    for a, b in zip(ref[:2], got[:2]):
        rel = np.abs(a - b).mean() / np.abs(a).mean()
        assert rel < 0.05
    np.testing.assert_array_equal(ref[2], got[2])


def test_saturation_report(tiny_and_stats):
    m, st = tiny_and_stats
    plan = plan_int8(m)
    mm = {t: compute_amax(st[t], "minmax") for t in plan.activations}
    rows = tensor_ranges(plan, mm, st, m)
    assert [r.tensor for r in rows] == plan.activations
    assert all(r.saturated == 0.0 and r.scale == pytest.approx(r.amax / 127) for r in rows)
    half = {t: v / 2 for t, v in mm.items()}
    rows = tensor_ranges(plan, half, st, m)
    for r in rows:
        x = st[r.tensor]
        assert 0.0 < r.saturated < 0.5
        assert r.saturated == pytest.approx(x.fraction_above(r.amax))
    (img,) = [r for r in rows if r.tensor == "images"]
    assert img.readers == ["node_conv_a"] and img.reader_scopes == ["ssd.vgg.0"]


def test_cpu_flavour_uses_the_same_grid_and_lets_onnxruntime_fuse(tiny_and_stats, photos, tmp_path):
    m, st = tiny_and_stats
    plan, amax, trt = _build(m, st)
    _, _, cpu = _build(m, st, target="onnxruntime")
    onnx.checker.check_model(cpu, full_check=True)
    idx = GraphIndex(cpu)
    for node in idx.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        t = node.input[0]
        zp = _init(cpu, node.input[2])
        assert zp.dtype == np.uint8
        assert int(zp) == (128 if t in ("images", "l2_out") else 0), t  # signed tensors centre at 128
        assert float(_init(cpu, node.input[1])) == pytest.approx(amax[t] / 127, rel=1e-6)
    conv = idx.nodes["node_conv7"]
    bdq = idx.producer[conv.input[2]]
    assert bdq.op_type == "DequantizeLinear" and _init(cpu, bdq.input[0]).dtype == np.int32
    # What the flavour is for: ONNX Runtime turns the ReLU convs into integer QLinearConv kernels.
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(cpu.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused.count("QLinearConv") >= 2
    ref = ort.InferenceSession(trt.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["loc"], {"images": photos}
    )[0]
    got = ort.InferenceSession(cpu.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["loc"], {"images": photos}
    )[0]
    assert np.abs(ref - got).mean() < 0.05 * np.abs(ref).mean()


def test_missing_ranges_and_bad_target_are_refused(tiny_and_stats):
    m, _ = tiny_and_stats
    plan = plan_int8(m)
    with pytest.raises(ValueError, match="no calibrated range"):
        build_int8(m, plan, {})
    with pytest.raises(ValueError, match="unknown INT8 target"):
        build_int8(m, plan, {t: 1.0 for t in plan.activations}, target="tflite")
