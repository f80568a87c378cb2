"""On a machine with an NVIDIA GPU and TensorRT: build real engines and compare them with ONNX
Runtime on CPU. Skipped (with the reason) everywhere else. See docs/tensorrt.md for how to run.

- tiny SSD-shaped models in FP32, FP16 (casts) and INT8 (Q/DQ) form, built and compared;
- the real SSD300 export (``ssd300_onnx`` fixture, seeded weights) built in FP32;
- any exports listed in ``SSD_DEPLOY_TRT_ONNX`` (comma-separated, e.g. the FP16 and INT8 files
  from the precision tools), tolerance chosen by their ``ssd_deploy.precision`` metadata;
- the context pool under 8 threads and CUDA-graph replay, both against single plain runs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from trt_onnx import make_ssd_like_onnx

from ssd_deploy.config import preset
from ssd_deploy.tensorrt import loader
from ssd_deploy.tensorrt.builder import BuildOptions, build_plan, parse_batch_profiles, read_onnx_info


def _gpu_reason() -> str | None:
    try:
        loader.load_tensorrt()
        from ssd_deploy.tensorrt.cuda import Cuda

        Cuda().device_count()
    except loader.TensorRTUnavailable as e:
        return str(e)
    return None


_REASON = _gpu_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs an NVIDIA GPU and TensorRT: {_REASON}"),
]

#: (loc atol, conf atol) against ONNX Runtime FP32 on CPU. FP32 engines use TF32 (on by default).
TOLERANCE = {"fp32": (2e-2, 2e-3), "fp16": (5e-2, 1e-2), "int8": (1e-1, 3e-2)}


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = np.array([20.0, -5.0, 10.0], np.float32)[None, :, None, None]
    return (rng.normal(0, 40, (n, 3, size, size)) + mean).astype(np.float32)


def _ort(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    loc, conf = sess.run(["loc", "conf"], {"images": x})
    return loc, conf


def _build(onnx_path: Path, tmp: Path, batch: str = "1:2:4") -> Path:
    out = tmp / (onnx_path.stem + ".plan")
    build_plan(BuildOptions(onnx=onnx_path, output=out, profiles=parse_batch_profiles(batch),
                            timing_cache=tmp / "timing.cache"))  # fmt: skip
    return out


def _compare(onnx_path: Path, plan: Path, precision: str, size: int) -> None:
    from ssd_deploy.runtime.tensorrt.backend import TensorRTBackend

    x = _images(3, size)
    want_loc, want_conf = _ort(onnx_path, x)
    with TensorRTBackend(plan) as be:
        loc, conf, times = be.run_timed(x)
        assert be.precision == precision and times.compute > 0
    atol_loc, atol_conf = TOLERANCE[precision]
    np.testing.assert_allclose(loc, want_loc, atol=atol_loc, rtol=0)
    np.testing.assert_allclose(conf, want_conf, atol=atol_conf, rtol=0)
    np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tiny_model_matches_onnxruntime(tmp_path, precision):
    cfg = preset("voc300")
    onnx_path = make_ssd_like_onnx(tmp_path / f"tiny_{precision}.onnx", cfg, precision=precision)
    _compare(onnx_path, _build(onnx_path, tmp_path), precision, cfg.size)


def test_ssd300_export_matches_onnxruntime(tmp_path, ssd300_onnx):
    _compare(ssd300_onnx, _build(ssd300_onnx, tmp_path), read_onnx_info(ssd300_onnx).precision, 300)


@pytest.mark.parametrize(
    "onnx_file", [p for p in os.environ.get("SSD_DEPLOY_TRT_ONNX", "").split(",") if p.strip()] or [None]
)
def test_listed_exports_match_onnxruntime(tmp_path, onnx_file):
    if onnx_file is None:
        pytest.skip(
            "set SSD_DEPLOY_TRT_ONNX=export/ssd300_fp16.onnx,export/ssd300_int8.onnx to check more exports"
        )
    path = Path(onnx_file.strip())
    info = read_onnx_info(path)
    _compare(path, _build(path, tmp_path), info.precision, info.config.size)


def test_threads_and_cuda_graphs_match_plain_runs(tmp_path):
    from ssd_deploy.runtime.tensorrt.backend import TensorRTBackend

    cfg = preset("voc300")
    plan = _build(make_ssd_like_onnx(tmp_path / "tiny.onnx", cfg), tmp_path, batch="1:2:4,5:8:8")
    inputs = [_images(1 + i % 8, cfg.size, seed=i) for i in range(24)]
    with TensorRTBackend(plan, contexts=1) as plain:
        expected = [plain.run(x) for x in inputs]
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []
    with TensorRTBackend(plan, contexts=4, cuda_graphs=True) as be:

        def worker(t: int) -> None:
            try:
                for _ in range(2):  # the second pass replays captured graphs
                    for i in range(t, len(inputs), 8):
                        results[i] = be.run(inputs[i])
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        notes = be.describe().get("notes", [])
    assert not errors, errors[0]
    for i, (loc, conf) in enumerate(expected):
        # Same engine, same kernels: equal up to reduction-order noise.
        np.testing.assert_allclose(results[i][0], loc, rtol=1e-5, atol=1e-6, err_msg=f"input {i} ({notes})")
        np.testing.assert_allclose(results[i][1], conf, rtol=1e-5, atol=1e-6, err_msg=f"input {i} ({notes})")
