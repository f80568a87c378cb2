"""INT8 Q/DQ ONNX the way strongly typed TensorRT wants it (docs/precision.md).

* activations: per-tensor, symmetric (zero point 0, INT8), one ``QuantizeLinear -> DequantizeLinear``
  pair on each input tensor of a Conv or pooling node, shared by all quantized readers;
* weights: per output channel (axis 0), symmetric, stored as INT8 initializers behind a
  ``DequantizeLinear``; bias stays FP32 (TensorRT fuses it itself);
* everything else (L2Norm, softmax, excluded layers) stays FP32.

A second flavour, ``target="onnxruntime"``, exists only to measure INT8 *speed* on a CPU: ONNX
Runtime fuses ``DQ -> Conv -> Relu -> Q`` into one integer ``QLinearConv`` only when the ReLU can be
dropped, i.e. when the following Q is UINT8 with zero point 0. That flavour keeps the same scales
(the same integer grid as the TensorRT graph on every tensor) but stores post-ReLU activations as
UINT8 (zero point 0) and signed ones as UINT8 with zero point 128, and it quantizes the bias to
INT32 as ONNX Runtime's own quantizer does. TensorRT does not accept UINT8 Q/DQ; do not build
engines from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import GraphIndex, NodeReport, module_scope, name_allocator, select_nodes, toposort
from .ranges import QMAX, TensorStats

#: Ops whose inputs get Q/DQ (TensorRT runs them in INT8 and fuses the surrounding scales).
QUANTIZED_OPS = ("Conv", "MaxPool", "AveragePool")
TARGETS = ("tensorrt", "onnxruntime")
#: A tensor whose calibrated range is zero (a dead layer) still needs a positive scale.
_MIN_AMAX = 1e-12


@dataclass
class Int8Plan:
    """Which nodes get quantized inputs, which are excluded and why, which tensors need ranges."""

    quantize: list[str]
    excluded: list[NodeReport]
    activations: list[str]

    @property
    def quantized_convs(self) -> int:
        return len(self.quantize)


@dataclass
class TensorRange:
    """One activation tensor's INT8 range and what it costs (the saturation report row)."""

    tensor: str
    amax: float
    scale: float
    absmax: float
    min: float
    max: float
    saturated: float  # fraction of calibration values with |x| > amax
    readers: list[str] = field(default_factory=list)
    reader_scopes: list[str] = field(default_factory=list)  # torch module paths, where recorded

    def to_dict(self) -> dict[str, Any]:
        return {
            "amax": self.amax,
            "scale": self.scale,
            "absmax": self.absmax,
            "min": self.min,
            "max": self.max,
            "saturated": self.saturated,
            "readers": self.readers,
            "reader_scopes": self.reader_scopes,
        }


def plan_int8(model: onnx.ModelProto, exclude: Sequence[str] = ()) -> Int8Plan:
    """Select the Conv/pooling nodes to quantize; ``exclude`` takes the patterns of
    :func:`ssd_deploy.quantize.graph.select_nodes` (``heads``, node names, scopes, globs)."""
    idx = GraphIndex(model)
    excluded_by = select_nodes(idx, exclude) if exclude else {}
    quantize: list[str] = []
    excluded: list[NodeReport] = []
    activations: list[str] = []
    for node in idx.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        if node.name in excluded_by:
            excluded.append(
                NodeReport(
                    node.name,
                    node.op_type,
                    module_scope(node),
                    f"excluded by --exclude {excluded_by[node.name]}",
                )
            )
            continue
        if idx.is_constant(node.input[0]) or not idx.is_float(node.input[0]):
            continue
        if node.op_type == "Conv" and node.input[1] not in idx.initializers:
            excluded.append(
                NodeReport(
                    node.name, node.op_type, module_scope(node), "weights are not a constant initializer"
                )
            )
            continue
        quantize.append(node.name)
        if node.input[0] not in activations:
            activations.append(node.input[0])
    return Int8Plan(quantize=quantize, excluded=excluded, activations=activations)


def share_pool_ranges(model: onnx.ModelProto, plan: Int8Plan, amax: Mapping[str, float]) -> dict[str, float]:
    """Give a max-pool's output the range of its input when both are quantized.

    Max-pooling only selects values, so with one scale on both sides the pool is exact in INT8 and
    both TensorRT and ONNX Runtime run it on integers (ONNX Runtime requires equal scales to fuse
    ``DQ -> MaxPool -> Q``). A separately calibrated output range would only add rounding.
    """
    idx = GraphIndex(model, infer_types=False)
    out = dict(amax)
    quantized = set(plan.quantize)
    for t in plan.activations:  # graph order: a chain of pools inherits from its first input
        node = idx.producer.get(t)
        if node is not None and node.op_type in ("MaxPool", "GlobalMaxPool") and node.name in quantized:
            src = node.input[0]
            if src in out:
                out[t] = out[src]
    return out


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel INT8 (levels -127..127): returns ``(int8 weights, scales)``."""
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    scale = np.where(flat > 0, flat / QMAX, 1.0)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scale.astype(np.float32)


def tensor_ranges(
    plan: Int8Plan, amax: Mapping[str, float], stats: Mapping[str, TensorStats], model: onnx.ModelProto
) -> list[TensorRange]:
    """The per-tensor range/saturation report for ``plan``'s activations."""
    idx = GraphIndex(model, infer_types=False)
    quantized = set(plan.quantize)
    rows = []
    for t in plan.activations:
        a = max(float(amax[t]), _MIN_AMAX)
        st = stats.get(t)
        readers = [c for c in idx.consumers.get(t, []) if c.name in quantized]
        rows.append(
            TensorRange(
                tensor=t,
                amax=a,
                scale=a / QMAX,
                absmax=st.absmax if st else float("nan"),
                min=st.min if st else float("nan"),
                max=st.max if st else float("nan"),
                saturated=st.fraction_above(a) if st else float("nan"),
                readers=[c.name for c in readers],
                reader_scopes=[module_scope(c) or c.name for c in readers],
            )
        )
    return rows


def build_int8(
    model: onnx.ModelProto,
    plan: Int8Plan,
    amax: Mapping[str, float],
    *,
    target: str = "tensorrt",
) -> onnx.ModelProto:
    """A copy of ``model`` with Q/DQ inserted per ``plan`` using the activation ranges ``amax``."""
    if target not in TARGETS:
        raise ValueError(f"unknown INT8 target {target!r} (choose from {', '.join(TARGETS)})")
    missing = [t for t in plan.activations if t not in amax]
    if missing:
        raise ValueError(f"no calibrated range for {', '.join(missing[:5])}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    idx = GraphIndex(m)
    g = m.graph
    fresh = name_allocator(idx)

    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    act_scale: dict[str, float] = {}
    dq_of: dict[str, str] = {}

    def add_init(base: str, arr: np.ndarray) -> str:
        name = fresh(base)
        new_inits.append(numpy_helper.from_array(arr, name))
        return name

    def add_dequantized(base: str, q: np.ndarray, scale: np.ndarray, suffix: str) -> str:
        """Store ``q`` with its per-channel ``scale`` (zero point 0); return the DQ output's name."""
        qn = add_init(f"{base}__{suffix}", q)
        sn = add_init(f"{base}__scale", scale)
        zn = add_init(f"{base}__zero_point", np.zeros(scale.shape, dtype=q.dtype))
        out = fresh(f"{base}__dq")
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", [qn, sn, zn], [out], name=fresh(f"dequantize/{base}"), axis=0
            )
        )
        return out

    for t in plan.activations:
        a = max(float(amax[t]), _MIN_AMAX)
        scale = np.float32(a / QMAX)
        act_scale[t] = float(scale)
        s_name = add_init(f"{t}__scale", np.array(scale, dtype=np.float32))
        if target == "tensorrt":
            zp = np.array(0, dtype=np.int8)
        else:
            zp = np.array(0 if idx.nonnegative(t) else 128, dtype=np.uint8)
        z_name = add_init(f"{t}__zero_point", zp)
        q_out, dq_out = fresh(f"{t}__q"), fresh(f"{t}__dq")
        new_nodes.append(
            helper.make_node("QuantizeLinear", [t, s_name, z_name], [q_out], name=fresh(f"quantize/{t}"))
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=fresh(f"dequantize/{t}")
            )
        )
        dq_of[t] = dq_out

    w_dq: dict[str, tuple[str, np.ndarray]] = {}
    for name in plan.quantize:
        node = idx.nodes[name]
        x = node.input[0]
        node.input[0] = dq_of[x]
        if node.op_type != "Conv":
            continue
        w_name = node.input[1]
        if w_name not in w_dq:
            q, s = quantize_weights(idx.array(w_name))
            w_dq[w_name] = (add_dequantized(w_name, q, s, "int8"), s)
        out, w_scale = w_dq[w_name]
        node.input[1] = out
        if target == "onnxruntime" and len(node.input) > 2 and node.input[2]:
            b_name = node.input[2]
            b = idx.array(b_name).astype(np.float64)
            b_scale = (act_scale[x] * w_scale.astype(np.float64)).astype(np.float32)
            qb = np.clip(np.rint(b / b_scale), -(2**31), 2**31 - 1).astype(np.int32)
            node.input[2] = add_dequantized(b_name, qb, b_scale, "int32")

    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    # Weights now live as INT8; drop FP32 originals nobody reads any more (they would double the file).
    still_read = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in still_read or t.name in idx.graph_outputs]
    del g.initializer[:]
    g.initializer.extend(keep)
    toposort(g)
    return m
