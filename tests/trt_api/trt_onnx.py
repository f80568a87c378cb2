"""Tiny ONNX models with the ssd_deploy export contract (input ``images [N,3,S,S]``, outputs
``loc [N,P,4]``, ``conf [N,P,C]`` softmax, ``priors [P,4]``, and the ``ssd_deploy.*`` metadata),
in FP32, FP16 (casts + FP16 weights) or INT8 (Q/DQ around a Conv) form. Small enough to write per
test, real enough for TensorRT and ONNX Runtime to run (the GPU tests compare the two).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssd_deploy.config import METADATA_KEY, SSDConfig
from ssd_deploy.priors import prior_boxes


def make_ssd_like_onnx(
    path: Path,
    config: SSDConfig,
    *,
    precision: str = "fp32",
    static_batch: int | None = None,
    extra_op: str | None = None,
    metadata: bool = True,
    precision_metadata: bool = True,
    seed: int = 0,
) -> Path:
    """Write the model and return ``path``. ``extra_op`` adds a node of that (unknown) op type."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    p, c, s = config.num_priors, config.num_classes, config.size
    wdtype = np.float16 if precision == "fp16" else np.float32
    nodes, inits = [], []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    x = "images"
    if precision == "int8":
        # Symmetric per-tensor activation and per-channel (axis 0) weight quantization, bias in FP32.
        w = rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32)
        w_scale = (np.abs(w).reshape(4, -1).max(axis=1) / 127.0).astype(np.float32)
        w_q = np.round(w / w_scale[:, None, None, None]).astype(np.int8)
        nodes += [
            helper.make_node("QuantizeLinear", [x, init("x_scale", np.array(1.0, np.float32)),
                                                init("x_zp", np.array(0, np.int8))], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
            helper.make_node("DequantizeLinear", [init("w_q", w_q), init("w_scale", w_scale),
                                                  init("w_zp", np.zeros(4, np.int8))], ["w_dq"], axis=0),
            helper.make_node("Conv", ["x_dq", "w_dq", init("conv_b", np.zeros(4, np.float32))], ["conv"]),
            helper.make_node("Relu", ["conv"], ["feat"]),
        ]  # fmt: skip
        x, k = "feat", 4
    elif precision == "fp16":
        nodes.append(helper.make_node("Cast", [x], ["x16"], to=TensorProto.FLOAT16))
        x, k = "x16", 3
    else:
        k = 3
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", init("w_loc", rng.normal(0, 0.05, (k, p * 4)).astype(wdtype))],
                         ["loc_f"]),
        helper.make_node("MatMul", ["flat", init("w_conf", rng.normal(0, 0.05, (k, p * c)).astype(wdtype))],
                         ["conf_f"]),
    ]  # fmt: skip
    if precision == "fp16":  # keep_io_types: FP32 outputs, softmax in FP32
        nodes += [helper.make_node("Cast", ["loc_f"], ["loc_f32"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", ["conf_f"], ["conf_f32"], to=TensorProto.FLOAT)]  # fmt: skip
        loc_f, conf_f = "loc_f32", "conf_f32"
    else:
        loc_f, conf_f = "loc_f", "conf_f"
    nodes += [
        helper.make_node("Reshape", [loc_f, init("loc_shape", np.array([-1, p, 4], np.int64))], ["loc"]),
        helper.make_node("Reshape", [conf_f, init("conf_shape", np.array([-1, p, c], np.int64))],
                         ["conf_logits"]),
        helper.make_node("Softmax", ["conf_logits"], ["conf"], axis=2),
        helper.make_node("Identity", [init("priors_const", prior_boxes(config.prior).astype(np.float32))],
                         ["priors"]),
    ]  # fmt: skip
    if extra_op:
        nodes.append(
            helper.make_node(extra_op, ["loc"], ["extra_out"], name="mystery_node", domain="ssd.test")
        )
    n = static_batch if static_batch is not None else "N"
    graph = helper.make_graph(
        nodes, "ssd_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [n, 3, s, s])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, [n, p, 4]),
         helper.make_tensor_value_info("conf", TensorProto.FLOAT, [n, p, c]),
         helper.make_tensor_value_info("priors", TensorProto.FLOAT, [p, 4])],
        initializer=inits,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ssd.test", 1)] if extra_op else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if metadata:
        meta = {METADATA_KEY: config.to_json()}
        if precision_metadata:
            meta["ssd_deploy.precision"] = precision
            meta["ssd_deploy.recipe"] = json.dumps({"precision": precision, "test": True})
        helper.set_model_props(model, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
