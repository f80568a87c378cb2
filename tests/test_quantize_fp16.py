"""FP16 conversion: the plan's rules and range check, the graph it writes, and the overflow proof."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from quantize_models import fp32_tensor, l2norm_in_real_precision, tiny_ssd

from ssd_deploy.quantize.fp16 import FP16_MAX, convert_fp16, naive_fp16_nodes, plan_fp16
from ssd_deploy.quantize.graph import GraphIndex, find_l2norm
from ssd_deploy.quantize.ranges import collect_stats

L2 = {"node_l2_pow", "node_l2_sum", "node_l2_sqrt", "node_l2_add", "node_l2_div", "node_l2_out"}


@pytest.fixture(scope="module")
def photos(sample_paths, voc300):
    from ssd_deploy.preprocess import preprocess

    batch, _ = preprocess(sample_paths[:3], voc300)
    return batch


def _stats(model: onnx.ModelProto, batch: np.ndarray):
    return collect_stats(
        model, (batch[i : i + 1] for i in range(len(batch))), GraphIndex(model).float_activations()
    )


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["loc", "conf", "priors"], {"images": x})


def test_rules_keep_l2norm_softmax_and_priors_fp32(photos):
    m = tiny_ssd()
    plan = plan_fp16(m, _stats(m, photos))
    reasons = {r.node: r.reason for r in plan.fp32}
    assert set(reasons) == L2 | {"node_conf", "priors_out"}
    assert all(reasons[n] == "rule:l2norm" for n in L2)
    assert reasons["node_conf"] == "rule:softmax" and reasons["priors_out"] == "rule:constant"
    idx = GraphIndex(m)
    convs = {n.name for n in idx.graph.node if n.op_type == "Conv"}
    assert convs <= set(plan.fp16)
    # Every FP32 decision carries the value the range pass saw (printed next to the reason).
    assert all(r.observed_max is not None for r in plan.fp32)


def test_range_check_keeps_overflowing_layers_fp32_and_says_why(photos):
    m = tiny_ssd(conv4_3_scale=10000.0)  # conv4_3 outputs around 10^5
    st = _stats(m, photos)
    assert st["conv4_3"].absmax > FP16_MAX
    plan = plan_fp16(m, st, margin=4.0)
    by_node = {r.node: r for r in plan.fp32}
    for name in ("node_conv4_3", "node_relu4_3", "node_pool4"):
        r = by_node[name]
        assert r.reason.startswith("range:") and r.observed_max > plan.limit
        assert f"{r.observed_max:.4g}" in r.reason
    assert "node_conv_a" in plan.fp16  # the stem is far from the limit
    # The margin is a real knob: a huge limit lets the same nodes through, no range reasons remain.
    loose = plan_fp16(m, st, margin=1.0)
    assert all(not r.reason.startswith("range:") for r in loose.fp32 if r.observed_max < FP16_MAX)
    # Without statistics there is no range check, only the rules.
    assert not any(r.reason.startswith("range:") for r in plan_fp16(m, None).fp32)


def test_converted_graph_types_io_and_accuracy(photos):
    m = tiny_ssd()
    plan = plan_fp16(m, _stats(m, photos))
    h = convert_fp16(m, set(plan.fp16))
    onnx.checker.check_model(h, full_check=True)
    # FP32 at the boundary (keep_io_types); initializers of FP16 convs stored as FP16.
    for vi in list(h.graph.input) + list(h.graph.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT, vi.name
    inits = {t.name: t for t in h.graph.initializer}
    idx = GraphIndex(h)
    for node in idx.graph.node:
        if node.op_type == "Conv":
            assert inits[node.input[1]].data_type == TensorProto.FLOAT16
    for name in L2 | {"node_conf"}:
        node = idx.nodes[name]
        assert all(idx.elem_type(t) == TensorProto.FLOAT for t in node.output)
    np.testing.assert_array_equal(
        numpy_helper.to_array(inits["priors_table"]),
        numpy_helper.to_array({t.name: t for t in m.graph.initializer}["priors_table"]),
    )
    ref, got = _run(m, photos), _run(h, photos)
    for name, a, b in zip(("loc", "conf", "priors"), ref, got):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, atol=5e-3 * max(1.0, float(np.abs(a).max())), err_msg=name)
    np.testing.assert_array_equal(got[2], ref[2])


def test_fp16_guard_proof_in_real_float16_arithmetic(photos):
    """conv4_3 scaled until the L2Norm sum of squares passes 65504: evaluated with numpy float16,
    a blanket FP16 conversion overflows, ours keeps the subgraph FP32 and matches FP32."""
    m = tiny_ssd(conv4_3_scale=40.0)
    st = _stats(m, photos)
    assert st["l2_sum"].absmax > FP16_MAX  # the premise: the sum of squares leaves FP16's range
    assert st["relu4_3"].absmax < FP16_MAX / 4  # while conv4_3 itself is comfortably inside it
    x = fp32_tensor(m, "relu4_3", photos)
    ref = l2norm_in_real_precision(m, x)  # the FP32 model: everything float32
    assert ref["sum_of_squares"].dtype == np.float32 and np.isfinite(ref["output"]).all()

    naive = convert_fp16(m, naive_fp16_nodes(m))
    bad = l2norm_in_real_precision(naive, x)
    assert bad["sum_of_squares"].dtype == np.float16
    assert np.isinf(bad["sum_of_squares"]).any()
    # x / inf = 0: the normalised features (what the source-0 heads see) are wiped out.
    lost = np.abs(bad["output"].astype(np.float32) - ref["output"]).max()
    assert lost > 0.5 * np.abs(ref["output"]).max()

    ours = convert_fp16(m, set(plan_fp16(m, st).fp16))
    good = l2norm_in_real_precision(ours, x)
    assert good["sum_of_squares"].dtype == np.float32
    assert np.isfinite(good["sum_of_squares"]).all() and np.isfinite(good["output"]).all()
    # The only FP16 on this path is the input rounding of the FP16 ReLU (11-bit mantissa).
    np.testing.assert_allclose(good["output"], ref["output"], rtol=2e-3, atol=2e-3)


def test_naive_conversion_really_is_all_fp16():
    m = tiny_ssd()
    naive = naive_fp16_nodes(m)
    assert L2 | {"node_conf"} <= naive and "priors_out" not in naive
    h = convert_fp16(m, naive)
    onnx.checker.check_model(h, full_check=True)
    idx = GraphIndex(h)
    (match,) = find_l2norm(idx)
    assert idx.elem_type(match.sum_of_squares) == TensorProto.FLOAT16


def test_convert_rejects_unknown_or_unconvertible_nodes():
    m = tiny_ssd()
    with pytest.raises(ValueError, match="unknown node"):
        convert_fp16(m, {"nope"})
    with pytest.raises(ValueError, match="margin"):
        plan_fp16(m, None, margin=0.5)
