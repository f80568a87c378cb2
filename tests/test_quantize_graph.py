"""Pattern finding for the precision passes (on the tiny SSD-shaped graph: no torch, milliseconds)."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from quantize_models import tiny_ssd

from ssd_deploy.quantize.graph import (
    GraphError,
    GraphIndex,
    find_heads,
    find_l2norm,
    module_scope,
    select_nodes,
    set_metadata,
    toposort,
)

L2_OPS = {"Pow", "ReduceSum", "Sqrt", "Add", "Div", "Mul"}


def _ops(idx: GraphIndex, names) -> set[str]:
    return {idx.nodes[n].op_type for n in names}


def test_l2norm_found_by_structure_without_names_or_metadata():
    m = tiny_ssd(node_names="opaque", scope_metadata=False)
    idx = GraphIndex(m)
    (match,) = find_l2norm(idx)
    assert match.found_by == "pattern"
    assert _ops(idx, match.nodes) == L2_OPS and len(match.nodes) == 6
    assert match.input == "relu4_3" and match.output == "l2_out" and match.sum_of_squares == "l2_sum"


def test_l2norm_structure_and_scope_agree_on_the_export_layout():
    idx = GraphIndex(tiny_ssd())
    (match,) = find_l2norm(idx)
    assert match.found_by == "pattern+scope"
    assert len(match.nodes) == 6


def test_l2norm_spelled_x_times_x_is_found():
    m = tiny_ssd(scope_metadata=False)
    for n in m.graph.node:
        if n.op_type == "Pow":
            n.op_type = "Mul"
            n.input[1] = n.input[0]
    (match,) = find_l2norm(GraphIndex(m))
    assert match.found_by == "pattern" and len(match.nodes) == 6


def test_l2norm_only_in_scope_metadata_is_still_found():
    # An Identity between ReduceSum and Sqrt breaks the structural pattern; the module scope recorded
    # by the exporter still names every node of the L2Norm.
    m = tiny_ssd()
    g = m.graph
    for n in g.node:
        if n.op_type == "Sqrt":
            n.input[0] = "l2_sum_copy"
    ident = helper.make_node("Identity", ["l2_sum"], ["l2_sum_copy"], name="copy")
    e = ident.metadata_props.add()
    e.key, e.value = (
        "pkg.torch.onnx.class_hierarchy",
        "['SSDHeads', 'ssd_deploy.model.ssd.L2Norm', 'aten.clone']",
    )
    g.node.append(ident)
    toposort(g)
    (match,) = find_l2norm(GraphIndex(m))
    assert match.found_by == "scope"
    assert set(match.nodes) >= {
        "node_l2_pow",
        "node_l2_sum",
        "copy",
        "node_l2_sqrt",
        "node_l2_div",
        "node_l2_out",
    }
    assert match.input == "relu4_3" and match.output == "l2_out"

    m_plain = tiny_ssd(scope_metadata=False)
    for n in m_plain.graph.node:
        if n.op_type == "Sqrt":
            n.op_type = "Abs"  # no longer a norm: nothing may be reported
    assert find_l2norm(GraphIndex(m_plain)) == []


def test_heads_and_exclusion_groups():
    idx = GraphIndex(tiny_ssd())
    heads = find_heads(idx)
    assert heads == {"loc": ["node_loc0", "node_loc1"], "conf": ["node_conf0", "node_conf1"]}
    assert set(select_nodes(idx, ["heads"])) == {"node_loc0", "node_loc1", "node_conf0", "node_conf1"}
    assert set(select_nodes(idx, ["l2norm-heads"])) == {"node_loc0", "node_conf0"}
    assert set(select_nodes(idx, ["first-conv"])) == {"node_conv_a"}
    assert set(select_nodes(idx, ["ssd.conf.*"])) >= {"node_conf0", "node_conf1"}
    assert set(select_nodes(idx, ["node_conv7"])) == {"node_conv7"}
    with pytest.raises(GraphError, match="matches no node"):
        select_nodes(idx, ["no_such_layer"])


def test_module_scope_read_from_exporter_metadata():
    idx = GraphIndex(tiny_ssd())
    assert module_scope(idx.nodes["node_conv4_3"]) == "ssd.vgg.3"
    assert module_scope(idx.nodes["priors_out"]) == ""


def test_toposort_restores_a_shuffled_graph():
    m = tiny_ssd()
    nodes = list(m.graph.node)
    random.Random(0).shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(m)
    toposort(m.graph)
    onnx.checker.check_model(m, full_check=True)
    x = np.zeros((1, 3, 300, 300), np.float32)
    ref = ort.InferenceSession(tiny_ssd().SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"images": x}
    )
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"images": x}
    )
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)


def test_set_metadata_keeps_other_keys_in_order():
    m = tiny_ssd()
    before = [p.key for p in m.metadata_props]
    set_metadata(m, {"ssd_deploy.precision": "fp16", "extra": "1"})
    assert [p.key for p in m.metadata_props] == before + ["extra"]
    assert {p.key: p.value for p in m.metadata_props}["ssd_deploy.precision"] == "fp16"
