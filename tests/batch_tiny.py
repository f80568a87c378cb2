"""A cheap ONNX model with the ssd_deploy contract whose detections depend on the image (for batch tests
and the batch benchmark): the per-channel means and a 2x2 grid of means drive every prior's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssd_deploy.config import METADATA_KEY, preset


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = preset("voc300")
    p, c, s = cfg.num_priors, cfg.num_classes, cfg.size
    rng = np.random.default_rng(seed)
    feats = 12  # 3 channels x 2 x 2 cells
    # Only a few hundred priors react to the image; the rest are sure background, so Detect has a
    # realistic amount of work (a handful of detections per image above 0.3) and stays fast.
    w_conf = rng.normal(0.0, 0.005, (feats, p, c)).astype(np.float32)
    w_conf[:, rng.permutation(p)[400:], :] = 0.0
    w_conf = w_conf.reshape(feats, p * c)
    b_conf = np.zeros((p, c), np.float32)
    b_conf[:, 0] = 8.0
    w_loc = (rng.normal(0.0, 0.002, (feats, p * 4))).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array([0, feats], np.int64), "flat"),
        numpy_helper.from_array(w_conf, "w_conf"),
        numpy_helper.from_array(b_conf.reshape(-1), "b_conf"),
        numpy_helper.from_array(w_loc, "w_loc"),
        numpy_helper.from_array(np.array([0, p, c], np.int64), "conf_shape"),
        numpy_helper.from_array(np.array([0, p, 4], np.int64), "loc_shape"),
    ]
    half = s // 2
    nodes = [
        helper.make_node(
            "AveragePool", ["images"], ["cells"], kernel_shape=[half, half], strides=[half, half]
        ),
        helper.make_node("Reshape", ["cells", "flat"], ["f"]),
        helper.make_node("Gemm", ["f", "w_conf", "b_conf"], ["logits_flat"]),
        helper.make_node("Reshape", ["logits_flat", "conf_shape"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["conf"], axis=-1),
        helper.make_node("MatMul", ["f", "w_loc"], ["loc_flat"]),
        helper.make_node("Reshape", ["loc_flat", "loc_shape"], ["loc"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_batch_ssd",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, s, s])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", p, 4]),
         helper.make_tensor_value_info("conf", TensorProto.FLOAT, ["batch", p, c])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {METADATA_KEY: cfg.to_json(), "ssd_deploy.precision": "fp32"})
    onnx.save_model(model, str(path))
    return path


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small PNG/JPEG images of varied sizes and colours."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(24, 96)), int(rng.integers(24, 96))
        base = rng.integers(0, 256, (1, 1, 3))
        img = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i:04d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(img).save(path)
        out.append(path)
    return out
