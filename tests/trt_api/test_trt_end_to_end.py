"""End-to-end ONNX through the TensorRT builder (fake TensorRT here), and the GPU check that would
compare the engine's in-graph Detect with the numpy Detect (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from trt_onnx import make_ssd_like_onnx

from ssd_deploy.config import preset
from ssd_deploy.endtoend import add_end_to_end
from ssd_deploy.tensorrt import loader
from ssd_deploy.tensorrt.builder import BuildError, BuildOptions, build_plan, parse_batch_profiles
from ssd_deploy.tensorrt.manifest import read_manifest


@pytest.fixture(scope="module")
def e2e_onnx(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("e2e")
    src = make_ssd_like_onnx(folder / "tiny_fp16.onnx", preset("voc300"), precision="fp16")
    add_end_to_end(src, folder / "tiny_fp16_e2e.onnx")
    return folder / "tiny_fp16_e2e.onnx"


def test_detect_outputs_dropped_unless_asked(fake, e2e_onnx, tmp_path):
    res = build_plan(BuildOptions(onnx=e2e_onnx, output=tmp_path / "plain.plan"), log=lambda m: None)
    assert read_manifest(res.plan).output_names == ["loc", "conf"]
    res = build_plan(
        BuildOptions(onnx=e2e_onnx, output=tmp_path / "e2e.plan", end_to_end=True), log=lambda m: None
    )
    assert read_manifest(res.plan).output_names == ["loc", "conf", "detections", "num_detections"]


def test_end_to_end_engine_needs_an_end_to_end_onnx(tmp_path):
    plain = make_ssd_like_onnx(tmp_path / "plain.onnx", preset("voc300"))
    with pytest.raises(BuildError, match="export with --end-to-end"):
        build_plan(BuildOptions(onnx=plain, output=tmp_path / "x.plan", end_to_end=True), log=lambda m: None)
    assert not (tmp_path / "x.plan").exists()


def _gpu_reason() -> str | None:
    try:
        loader.load_tensorrt()
        from ssd_deploy.tensorrt.cuda import Cuda

        Cuda().device_count()
    except loader.TensorRTUnavailable as e:
        return str(e)
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_gpu_engine_detect_equals_numpy_detect(tmp_path, precision):
    """Before making end-to-end engines a TensorRT default: the engine's detections must equal the
    numpy Detect run on the same engine's loc/conf (sets; class exact, score 1e-6, box 1e-5),
    including equal-score ties, whose order TensorRT's NMS does not specify."""
    reason = _gpu_reason()
    if reason is not None:
        pytest.skip(f"needs an NVIDIA GPU and TensorRT: {reason}")
    from trt_all_outputs import run_all_outputs

    from ssd_deploy.postprocess import detect
    from ssd_deploy.priors import prior_boxes
    from tests.test_end_to_end import assert_same_as_numpy

    cfg = preset("voc300")
    src = make_ssd_like_onnx(tmp_path / f"tiny_{precision}.onnx", cfg, precision=precision)
    dst = tmp_path / "e2e.onnx"
    add_end_to_end(src, dst)
    res = build_plan(BuildOptions(onnx=dst, output=tmp_path / "e2e.plan", end_to_end=True,
                                  profiles=parse_batch_profiles("1:2:4")))  # fmt: skip
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.normal(0, 40, (batch, 3, cfg.size, cfg.size)).astype(np.float32)
        out = run_all_outputs(res.plan, x)
        ref = detect(out["loc"], out["conf"], prior_boxes(cfg.prior), cfg.variances, cfg.detect)
        assert_same_as_numpy(out["detections"], out["num_detections"], ref)
