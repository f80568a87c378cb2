"""A tiny SSD-shaped ONNX model (built with ``onnx.helper``, no PyTorch) for fast tests and demos.

It has what the precision passes care about in the real SSD300, in a few thousand MACs per pixel:
a strided stem, a "conv4_3" + ReLU feeding both a max-pool and an L2Norm (Pow, ReduceSum, Sqrt,
Add eps, Div, Mul by a per-channel weight of 20), a second source, loc/conf heads on both sources
with NCHW -> NHWC permutes, reshapes and concats, an FP32 softmax and a constant priors output.
Nodes carry torch-exporter style ``metadata_props`` (module scope) unless asked not to.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ssd_deploy.config import preset
from ssd_deploy.contract import CONFIG_KEY as METADATA_KEY
from ssd_deploy.contract import PRECISION_KEY, RECIPE_KEY, WEIGHTS_KEY

NUM_CLASSES = 3
ANCHORS = (4, 6)


def _conv_params(rng: np.random.Generator, cin: int, cout: int, k: int, gain: float = 1.0):
    fan_in = cin * k * k
    w = rng.normal(0.0, gain * np.sqrt(2.0 / fan_in), size=(cout, cin, k, k)).astype(np.float32)
    b = rng.normal(0.0, 0.1, size=(cout,)).astype(np.float32)
    return w, b


def tiny_ssd(
    *,
    seed: int = 0,
    conv4_3_scale: float = 1.0,
    scope_metadata: bool = True,
    node_names: str = "torch",
    size: int = 300,
) -> onnx.ModelProto:
    """Build the tiny model. ``conv4_3_scale`` multiplies that conv's weights and bias (to push the
    L2Norm sum of squares past 65504); ``node_names="opaque"`` renames every node ``n0, n1, ...``."""
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op: str, ins: list[str], outs: list[str], scope: str, cls: str, **attrs) -> None:
        n = helper.make_node(op, ins, outs, name=f"node_{outs[0]}", **attrs)
        if scope_metadata:
            for k, v in (
                ("namespace", f": SSDHeads/{scope}: {cls}/{outs[0]}: aten.{op.lower()}"),
                ("pkg.torch.onnx.class_hierarchy", repr(["SSDHeads", cls, f"aten.{op.lower()}"])),
            ):
                e = n.metadata_props.add()
                e.key, e.value = k, v
        nodes.append(n)

    def conv(
        x: str,
        out: str,
        cin: int,
        cout: int,
        k: int,
        scope: str,
        stride: int = 1,
        pad: int = 1,
        scale: float = 1.0,
        gain: float = 1.0,
    ) -> str:
        w, b = _conv_params(rng, cin, cout, k, gain)
        init(f"{scope}.weight", w * scale)
        init(f"{scope}.bias", b * scale)
        node(
            "Conv",
            [x, f"{scope}.weight", f"{scope}.bias"],
            [out],
            scope,
            "torch.nn.Conv2d",
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
        )
        return out

    def relu(x: str, out: str, scope: str) -> str:
        node("Relu", [x], [out], scope, "torch.nn.ReLU")
        return out

    c = NUM_CLASSES
    # The stem's small gain stands in for trained weights' scale: activations of a few units, so the
    # L2Norm sum of squares stays well inside FP16 unless conv4_3_scale pushes it out.
    x = relu(conv("images", "conv_a", 3, 8, 3, "ssd.vgg.0", stride=4, gain=0.02), "relu_a", "ssd.vgg.1")
    x = "pool_a"
    node(
        "MaxPool",
        ["relu_a"],
        [x],
        "ssd.vgg.2",
        "torch.nn.MaxPool2d",
        kernel_shape=[2, 2],
        strides=[2, 2],
        ceil_mode=1,
    )
    src0 = relu(conv(x, "conv4_3", 8, 16, 3, "ssd.vgg.3", scale=conv4_3_scale), "relu4_3", "ssd.vgg.4")
    # L2Norm exactly as ssd_deploy.model.L2Norm exports it.
    init("l2.two", np.array(2.0, np.float32))
    init("l2.axes", np.array([1], np.int64))
    init("l2.eps", np.full((1, 1, 1, 1), 1e-10, np.float32))
    init("l2.weight", np.full((1, 16, 1, 1), 20.0, np.float32))
    node("Pow", [src0, "l2.two"], ["l2_pow"], "ssd.L2Norm", "ssd_deploy.model.ssd.L2Norm")
    node(
        "ReduceSum",
        ["l2_pow", "l2.axes"],
        ["l2_sum"],
        "ssd.L2Norm",
        "ssd_deploy.model.ssd.L2Norm",
        keepdims=1,
    )
    node("Sqrt", ["l2_sum"], ["l2_sqrt"], "ssd.L2Norm", "ssd_deploy.model.ssd.L2Norm")
    node("Add", ["l2_sqrt", "l2.eps"], ["l2_add"], "ssd.L2Norm", "ssd_deploy.model.ssd.L2Norm")
    node("Div", [src0, "l2_add"], ["l2_div"], "ssd.L2Norm", "ssd_deploy.model.ssd.L2Norm")
    node("Mul", ["l2.weight", "l2_div"], ["l2_out"], "ssd.L2Norm", "ssd_deploy.model.ssd.L2Norm")
    node("MaxPool", [src0], ["pool4"], "ssd.vgg.5", "torch.nn.MaxPool2d", kernel_shape=[2, 2], strides=[2, 2])
    src1 = relu(conv("pool4", "conv7", 16, 32, 3, "ssd.vgg.6"), "relu7", "ssd.vgg.7")

    locs, confs = [], []
    for k, (src, cin, a) in enumerate(((("l2_out"), 16, ANCHORS[0]), (src1, 32, ANCHORS[1]))):
        for kind, width, dest in (("loc", 4, locs), ("conf", c, confs)):
            h = conv(src, f"{kind}{k}", cin, a * width, 3, f"ssd.{kind}.{k}")
            node("Transpose", [h], [f"{kind}{k}_t"], "", "aten.permute", perm=[0, 2, 3, 1])
            shape = init(f"{kind}{k}_shape", np.array([0, -1, width], np.int64))
            node("Reshape", [f"{kind}{k}_t", shape], [f"{kind}{k}_r"], "", "aten.view")
            dest.append(f"{kind}{k}_r")
    node("Concat", locs, ["loc"], "", "aten.cat", axis=1)
    node("Concat", confs, ["conf_logits"], "", "aten.cat", axis=1)
    node("Softmax", ["conf_logits"], ["conf"], "", "aten.softmax", axis=-1)
    num_priors = 38 * 38 * ANCHORS[0] + 19 * 19 * ANCHORS[1]
    pri = rng.uniform(0.0, 1.0, size=(num_priors, 4)).astype(np.float32)
    init("priors_table", pri)
    nodes.append(helper.make_node("Identity", ["priors_table"], ["priors"], name="priors_out"))

    if node_names == "opaque":
        for i, n in enumerate(nodes):
            n.name = f"n{i}"
    graph = helper.make_graph(
        nodes,
        "tiny_ssd",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [
            helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", num_priors, 4]),
            helper.make_tensor_value_info("conf", TensorProto.FLOAT, ["batch", num_priors, c]),
            helper.make_tensor_value_info("priors", TensorProto.FLOAT, [num_priors, 4]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="ssd_deploy.tests"
    )
    model.ir_version = 8
    cfg = preset("voc300")
    for k, v in (
        (METADATA_KEY, cfg.to_json()),
        (PRECISION_KEY, "fp32"),
        (RECIPE_KEY, json.dumps({"precision": "fp32"})),
        (WEIGHTS_KEY, json.dumps({"source": "tiny-test-model", "seed": seed})),
    ):
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(model, full_check=True)
    return model


def fp32_tensor(model: onnx.ModelProto, name: str, images: np.ndarray) -> np.ndarray:
    """Any intermediate tensor of an FP32 model, computed by ONNX Runtime on ``images``."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([name], {"images": images})[0]


def l2norm_in_real_precision(converted: onnx.ModelProto, l2_input: np.ndarray) -> dict[str, np.ndarray]:
    """Run a converted model's L2Norm subgraph with numpy in the graph's own element types.

    ``l2_input`` is the FP32 value of the L2Norm's input (conv4_3 after ReLU); it enters the subgraph
    in the type the converted graph gives that tensor (FP16 after an FP16 ReLU), passes every Cast
    the conversion inserted and every node in the precision the conversion chose. Returns the sum of
    squares, the output and the whole environment.
    """
    from float16_eval import run_nodes

    from ssd_deploy.quantize.graph import GraphIndex, find_l2norm, subgraph_nodes

    idx = GraphIndex(converted)
    (match,) = find_l2norm(idx)
    start = match.input
    while start in idx.producer and idx.producer[start].op_type == "Cast":
        start = idx.producer[start].input[0]  # begin before the conversion's own Cast
    dtype = helper.tensor_dtype_to_np_dtype(idx.elem_type(start) or TensorProto.FLOAT)
    nodes = subgraph_nodes(idx, [start], [match.output])
    env = run_nodes(converted, nodes, {start: l2_input.astype(dtype)})
    return {
        "sum_of_squares": env[match.sum_of_squares],
        "output": env[match.output],
        "env": env,
        "nodes": [n.name for n in nodes],
    }  # type: ignore[dict-item]
