"""Evaluate a few ONNX nodes with numpy in the element types the graph declares.

ONNX Runtime's CPU provider runs many FP16 ops by casting to FP32 and back, which hides exactly the
overflow an FP16 engine would hit (docs/precision.md). Here a ``float16`` tensor stays ``float16``
through every op — numpy rounds each result to half precision, and a value above 65504 becomes
``inf`` — so a subgraph such as the L2Norm can be checked as a GPU would compute it.

Only the element-wise, reduction and layout ops found around SSD's L2Norm and heads are supported;
anything else raises ``NotImplementedError`` rather than guessing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
    "Max": np.maximum,
    "Min": np.minimum,
}
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Sqrt": np.sqrt,
    "Exp": np.exp,
    "Log": np.log,
    "Neg": np.negative,
    "Abs": np.abs,
    "Reciprocal": np.reciprocal,
    "Relu": lambda x: np.maximum(x, x.dtype.type(0)),
    "Identity": lambda x: x,
}


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def run_nodes(
    model: onnx.ModelProto,
    nodes: Sequence[onnx.NodeProto],
    feeds: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Run ``nodes`` (in order) on ``feeds`` plus the model's initializers; returns every tensor."""
    env: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    env.update(feeds)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for node in nodes:
            ins = [env[i] if i else None for i in node.input]
            a = _attrs(node)
            op = node.op_type
            if op in _BINARY:
                x, y = ins[0], ins[1]
                if x.dtype != y.dtype and not (op == "Pow"):
                    raise TypeError(f"{node.name}: {op} of {x.dtype} and {y.dtype} (ONNX requires one type)")
                out = _BINARY[op](x, y.astype(x.dtype) if op == "Pow" else y)
                out = np.asarray(out, dtype=x.dtype)
            elif op in _UNARY:
                out = np.asarray(_UNARY[op](ins[0]), dtype=ins[0].dtype)
            elif op == "Cast":
                out = ins[0].astype(helper.tensor_dtype_to_np_dtype(int(a["to"])))
            elif op == "ReduceSum":
                axes = tuple(int(v) for v in ins[1]) if len(ins) > 1 and ins[1] is not None else None
                keep = bool(a.get("keepdims", 1))
                # The sum is formed and rounded in the input's type: float16 in, float16 out.
                out = np.asarray(np.sum(ins[0], axis=axes, keepdims=keep, dtype=ins[0].dtype))
            elif op == "Softmax":
                axis = int(a.get("axis", -1))
                x = ins[0]
                e = np.exp(x - np.max(x, axis=axis, keepdims=True))
                out = np.asarray(e / np.sum(e, axis=axis, keepdims=True, dtype=x.dtype), dtype=x.dtype)
            elif op == "Transpose":
                out = np.transpose(ins[0], a.get("perm"))
            elif op == "Reshape":
                shape = [int(s) for s in ins[1]]
                shape = [ins[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
                out = ins[0].reshape(shape)
            elif op == "Concat":
                out = np.concatenate(ins, axis=int(a["axis"]))
            else:
                raise NotImplementedError(f"{node.name}: op {op} is not supported by the numpy evaluator")
            env[node.output[0]] = out
    return env
