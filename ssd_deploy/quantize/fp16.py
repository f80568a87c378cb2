"""FP16 ONNX for strongly typed TensorRT: FP16 initializers and explicit Casts, FP32 where it must be.

TensorRT 11 takes each layer's precision from the graph's tensor types, so the decision is made
here, per node, in two steps:

1. **Rules** for the known SSD hazards, whatever the data says: the L2Norm on conv4_3 (its sum of
   512 squares passes 65504 once activations average above ~11), the softmax, any box decode
   (``Exp``), constant subgraphs (the priors table stays bit-exact) and op types not known to be
   safe in FP16.
2. **A range check**: a node whose input or output values, measured on real calibration images with
   the FP32 model, exceed ``65504 / margin`` stays FP32. ONNX Runtime on the CPU computes many FP16
   ops in FP32, so running the FP16 file there cannot prove this; the measured ranges can.

Inputs and outputs stay FP32 (``keep_io_types``): Casts are inserted at every FP32/FP16 boundary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import (
    FLOAT,
    FLOAT16,
    GraphIndex,
    NodeReport,
    find_l2norm,
    module_scope,
    name_allocator,
    select_nodes,
    toposort,
)
from .ranges import TensorStats

FP16_MAX = 65504.0
#: Observed maxima must stay below 65504 / margin: headroom for images brighter or busier than the
#: calibration set (the input is bounded, so activations can only grow by a modest factor).
DEFAULT_MARGIN = 4.0

#: Ops allowed to run in FP16 by default: data movement and the well-conditioned arithmetic of a CNN.
FP16_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Relu",
        "LeakyRelu",
        "Clip",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "BatchNormalization",
        "Transpose",
        "Reshape",
        "Flatten",
        "Concat",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Add",
        "Sub",
        "Mul",
        "Gemm",
        "MatMul",
        "Sigmoid",
        "Slice",
        "Split",
        "Pad",
    }
)
#: Ops whose float inputs all share one type, so converting them is mechanical (used by
#: :func:`naive_fp16_nodes` for the "convert everything" baseline the tests compare against).
CONVERTIBLE_OPS = FP16_OPS | frozenset(
    {
        "Pow",
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceL2",
        "Sqrt",
        "Div",
        "Reciprocal",
        "Softmax",
        "LogSoftmax",
        "Exp",
        "Log",
        "Max",
        "Min",
        "Neg",
        "Abs",
        "Tanh",
    }
)


@dataclass
class Fp16Plan:
    """Which nodes run in FP16 and why the others stay FP32."""

    fp16: list[str]
    fp32: list[NodeReport]
    limit: float
    margin: float
    range_checked: bool
    observed: dict[str, float] = field(default_factory=dict)  # node -> max |value| seen

    def fp32_by_reason(self) -> dict[str, list[NodeReport]]:
        out: dict[str, list[NodeReport]] = {}
        for r in self.fp32:
            key = r.reason.split(":", 1)[0]
            out.setdefault(key, []).append(r)
        return out


def _node_observed_max(
    idx: GraphIndex, node: onnx.NodeProto, stats: Mapping[str, TensorStats]
) -> float | None:
    vals = []
    for t in list(node.input) + list(node.output):
        if not t:
            continue
        if t in stats and stats[t].count:
            vals.append(stats[t].absmax)
            if stats[t].nonfinite:
                vals.append(float("inf"))
        elif t in idx.initializers and idx.is_float(t):
            a = idx.array(t)
            if a.size:
                vals.append(float(np.max(np.abs(a))))
    return max(vals) if vals else None


def plan_fp16(
    model: onnx.ModelProto,
    stats: Mapping[str, TensorStats] | None,
    *,
    margin: float = DEFAULT_MARGIN,
    keep_fp32: Sequence[str] = (),
) -> Fp16Plan:
    """Decide the precision of every node (see the module docstring for the rules)."""
    if margin < 1.0:
        raise ValueError(f"the FP16 safety margin must be >= 1, got {margin}")
    idx = GraphIndex(model)
    limit = FP16_MAX / margin
    l2 = {n for m in find_l2norm(idx) for n in m.nodes}
    user = select_nodes(idx, keep_fp32) if keep_fp32 else {}
    stats = stats or {}
    fp16: list[str] = []
    fp32: list[NodeReport] = []
    observed: dict[str, float] = {}
    for node in idx.graph.node:
        floats = [t for t in list(node.input) + list(node.output) if t and idx.is_float(t)]
        obs = _node_observed_max(idx, node, stats)
        if obs is not None:
            observed[node.name] = obs
        if not floats:
            continue  # shape arithmetic and friends: no float data, nothing to decide
        rule = None
        if idx.node_is_constant(node):
            rule = "constant"
        elif node.name in l2:
            rule = "l2norm"
        elif node.op_type in ("Softmax", "LogSoftmax"):
            rule = "softmax"
        elif node.op_type == "Exp" or "decode" in module_scope(node).lower():
            rule = "decode"
        elif node.name in user:
            rule = "user"
        if rule is not None:
            fp32.append(NodeReport(node.name, node.op_type, module_scope(node), f"rule:{rule}", obs))
            continue
        if node.op_type not in FP16_OPS:
            fp32.append(
                NodeReport(
                    node.name,
                    node.op_type,
                    module_scope(node),
                    f"op:{node.op_type} is not on the FP16 list",
                    obs,
                )
            )
            continue
        if obs is not None and not obs <= limit:
            fp32.append(
                NodeReport(
                    node.name,
                    node.op_type,
                    module_scope(node),
                    f"range:observed max {obs:.4g} > {limit:.4g} (65504 / margin {margin:g})",
                    obs,
                )
            )
            continue
        fp16.append(node.name)
    return Fp16Plan(
        fp16=fp16, fp32=fp32, limit=limit, margin=margin, range_checked=bool(stats), observed=observed
    )


def naive_fp16_nodes(model: onnx.ModelProto) -> set[str]:
    """Every convertible node: what a blanket "convert the model to FP16" does (the unsafe baseline)."""
    idx = GraphIndex(model)
    return {
        n.name
        for n in idx.graph.node
        if n.op_type in CONVERTIBLE_OPS
        and not idx.node_is_constant(n)
        and any(idx.is_float(t) for t in list(n.input) + list(n.output) if t)
    }


def convert_fp16(model: onnx.ModelProto, fp16_nodes: set[str] | Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` where ``fp16_nodes`` compute in FP16; graph inputs and outputs stay FP32.

    Float initializers read only by FP16 nodes are stored in FP16; others get an FP16 copy. Every
    FP32 -> FP16 and FP16 -> FP32 edge gets one ``Cast`` (shared by all consumers of the tensor).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    idx = GraphIndex(m)
    g = m.graph
    half = set(fp16_nodes)
    unknown = half - set(idx.nodes)
    if unknown:
        raise ValueError(f"unknown node(s): {', '.join(sorted(unknown))}")
    bad = [n for n in half if idx.nodes[n].op_type not in CONVERTIBLE_OPS]
    if bad:
        raise ValueError(f"cannot convert {', '.join(sorted(bad))} to FP16 (op type not convertible)")

    fresh = name_allocator(idx)

    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    half_tensors: set[str] = set()
    to_half: dict[str, str] = {}  # FP32 tensor -> its FP16 twin, for FP16 consumers
    outputs = set(idx.graph_outputs)

    def half_version(t: str) -> str:
        if t in to_half:
            return to_half[t]
        if t in idx.initializers:
            arr = idx.array(t)
            h = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)
            readers = idx.consumers.get(t, [])
            if all(r.name in half for r in readers) and t not in outputs:
                idx.initializers[t].CopyFrom(numpy_helper.from_array(h, t))
                name = t
            else:
                name = fresh(f"{t}__fp16")
                new_inits.append(numpy_helper.from_array(h, name))
        else:
            name = fresh(f"{t}__fp16")
            new_nodes.append(
                helper.make_node("Cast", [t], [name], name=fresh(f"cast_to_fp16/{t}"), to=FLOAT16)
            )
        to_half[t] = name
        half_tensors.add(name)
        return name

    # Outputs of FP16 nodes become FP16. Graph outputs keep their name (and FP32 type) through a Cast;
    # FP32 readers of an FP16 tensor read a Cast of it.
    produced_half: dict[str, str] = {}  # original tensor name -> FP16 name it now has
    for node in g.node:
        if node.name not in half:
            continue
        for k, t in enumerate(node.output):
            if not t or not idx.is_float(t):
                continue
            if t in outputs:
                hname = fresh(f"{t}__fp16")
                node.output[k] = hname
                new_nodes.append(
                    helper.make_node("Cast", [hname], [t], name=fresh(f"cast_to_fp32/{t}"), to=FLOAT)
                )
            else:
                hname = t
                fp32_readers = [c for c in idx.consumers.get(t, []) if c.name not in half]
                if fp32_readers:
                    back = fresh(f"{t}__fp32")
                    new_nodes.append(
                        helper.make_node("Cast", [t], [back], name=fresh(f"cast_to_fp32/{t}"), to=FLOAT)
                    )
                    for c in fp32_readers:
                        for j, i in enumerate(c.input):
                            if i == t:
                                c.input[j] = back
            produced_half[t] = hname
            half_tensors.add(hname)

    for node in g.node:
        if node.name not in half:
            continue
        for j, t in enumerate(node.input):
            if not t:
                continue
            if t in produced_half:
                node.input[j] = produced_half[t]
            elif idx.is_float(t):
                node.input[j] = half_version(t)

    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    for vi in g.value_info:
        if vi.name in half_tensors and vi.type.tensor_type.elem_type == FLOAT:
            vi.type.tensor_type.elem_type = FLOAT16
    toposort(g)
    return m


def fp16_underflow(model: onnx.ModelProto, fp16_nodes: set[str]) -> dict[str, int]:
    """Per float initializer read by FP16 nodes: how many non-zero values flush to zero in FP16."""
    idx = GraphIndex(model, infer_types=False)
    out: dict[str, int] = {}
    for name, t in idx.initializers.items():
        if t.data_type != FLOAT or not any(c.name in fp16_nodes for c in idx.consumers.get(name, [])):
            continue
        a = idx.array(name)
        n = int(np.count_nonzero((a != 0) & (a.astype(np.float16) == 0)))
        if n:
            out[name] = n
    return out
