"""The precision passes on the real SSD300 export (seeded weights): one calibration, shared.

Two sample photos calibrate (speed); the statistics are cached in the module's temp folder, so the
FP16 and INT8 conversions below run the images once.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from quantize_models import fp32_tensor, l2norm_in_real_precision

from ssd_deploy.quantize import gather_images, quantize_fp16, quantize_int8
from ssd_deploy.quantize.fp16 import FP16_MAX, convert_fp16, naive_fp16_nodes, plan_fp16
from ssd_deploy.quantize.graph import GraphIndex, find_heads, find_l2norm


@pytest.fixture(scope="module")
def converted(ssd300_onnx, sample_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantize")
    images = gather_images(sample_paths[:2])
    cache = out / "calib.json"
    fp16 = quantize_fp16(ssd300_onnx, images, output=out / "fp16.onnx", cache=cache)
    int8 = quantize_int8(ssd300_onnx, images, output=out / "int8.onnx", cache=cache, method="percentile")
    return {"fp16": fp16, "int8": int8, "images": images}


def test_real_export_patterns(ssd300_onnx):
    idx = GraphIndex(onnx.load(str(ssd300_onnx)))
    (l2,) = find_l2norm(idx)
    assert l2.found_by == "pattern+scope"
    assert sorted(idx.nodes[n].op_type for n in l2.nodes) == ["Add", "Div", "Mul", "Pow", "ReduceSum", "Sqrt"]
    heads = find_heads(idx)
    assert len(heads["loc"]) == 6 and len(heads["conf"]) == 6


def test_fp16_keeps_exactly_the_hazards_fp32(converted, ssd300_onnx):
    res = converted["fp16"]
    assert res.calibration.status == "collected"
    idx = GraphIndex(onnx.load(str(ssd300_onnx)))
    (l2,) = find_l2norm(idx)
    kept = {r.node: r.reason for r in res.fp16_plan.fp32}
    softmax = [n.name for n in idx.graph.node if n.op_type == "Softmax"]
    priors = idx.producer["priors"].name
    assert set(kept) == set(l2.nodes) | set(softmax) | {priors}
    m = onnx.load(str(res.output))
    assert all(
        v.type.tensor_type.elem_type == TensorProto.FLOAT for v in list(m.graph.input) + list(m.graph.output)
    )
    assert res.parity["loc"] < 0.02 and res.parity["conf"] < 2e-3 and res.parity["priors"] == 0.0


def test_int8_graph_and_cache_sharing(converted):
    res = converted["int8"]
    assert res.calibration.status == "reused"  # the FP16 run collected the statistics
    assert res.int8_plan.quantized_convs == 40  # 35 convs + 5 max-pools
    m = onnx.load(str(res.output))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") == len(res.int8_plan.activations)
    assert ops.count("DequantizeLinear") == len(res.int8_plan.activations) + 35
    assert res.recipe["saturation"]["max"] < 0.01


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_ssd_check_head_errors_within_thresholds(converted, sample_paths, precision):
    from ssd_deploy.check import THRESHOLDS, check_artifact

    report = check_artifact(converted[precision].output, images=sample_paths[2:3], batch=1)
    assert report.precision == precision
    limits = THRESHOLDS[precision]
    assert report.heads["loc"]["max_abs"] <= limits["loc_max"]
    assert report.heads["conf"]["max_abs"] <= limits["conf_max"]


def test_fp16_guard_on_the_real_conv4_3(ssd300_onnx, sample_paths, voc300):
    """Scale the real conv4_3 until the L2Norm sum of squares passes 65504, then evaluate the L2Norm
    in real float16 arithmetic: the blanket conversion overflows, ours stays finite and exact."""
    from ssd_deploy.preprocess import preprocess

    m = onnx.load(str(ssd300_onnx))
    idx = GraphIndex(m)
    (l2,) = find_l2norm(idx)
    relu = idx.producer[l2.input]
    conv = idx.producer[relu.input[0]]
    assert relu.op_type == "Relu" and conv.op_type == "Conv"
    x, _ = preprocess(sample_paths[:1], voc300)
    seeded = fp32_tensor(m, l2.input, x)
    sum_sq = float((seeded.astype(np.float64) ** 2).sum(axis=1).max())
    k = float(np.sqrt(4 * FP16_MAX / sum_sq))  # lands the largest sum of squares near 4 x 65504
    for name in conv.input[1:]:
        t = next(t for t in m.graph.initializer if t.name == name)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(k), name))
    act = fp32_tensor(m, l2.input, x)
    assert (act.astype(np.float64) ** 2).sum(axis=1).max() > FP16_MAX
    assert act.max() < FP16_MAX / 4  # conv4_3's own values are fine in FP16

    ref = l2norm_in_real_precision(m, act)
    bad = l2norm_in_real_precision(convert_fp16(m, naive_fp16_nodes(m)), act)
    assert bad["sum_of_squares"].dtype == np.float16 and np.isinf(bad["sum_of_squares"]).any()
    assert np.abs(bad["output"].astype(np.float32) - ref["output"]).max() > 0.5 * np.abs(ref["output"]).max()
    good = l2norm_in_real_precision(convert_fp16(m, set(plan_fp16(m, None).fp16)), act)
    assert good["sum_of_squares"].dtype == np.float32 and np.isfinite(good["output"]).all()
    np.testing.assert_allclose(
        good["output"], ref["output"], rtol=2e-3, atol=2e-3 * np.abs(ref["output"]).max()
    )
