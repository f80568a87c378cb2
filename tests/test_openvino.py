"""OpenVINO backend: parity with ONNX Runtime, thread safety, model cache, precision refusals,
``device="auto"`` selection, the CLIs' ``--device openvino``, Triton's OpenVINO backend."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from ssd_deploy.runtime import BackendError, Detector
from ssd_deploy.runtime import detector as detector_mod
from ssd_deploy.runtime.openvino import OpenVINOBackend
from ssd_deploy.runtime.openvino import backend as ov_backend
from ssd_deploy.runtime.openvino.onnx_meta import read_onnx_metadata


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ov_cache")


@pytest.fixture(scope="module")
def ov(ssd300_onnx, cache) -> OpenVINOBackend:
    return OpenVINOBackend(ssd300_onnx, cache_dir=cache)


def _batch(n: int, seed: int = 0) -> np.ndarray:
    # Pixel-like values minus a mean, as preprocess produces.
    return np.random.default_rng(seed).uniform(-120, 135, size=(n, 3, 300, 300)).astype(np.float32)


def test_metadata_reader_matches_onnx(ssd300_onnx):
    onnx = pytest.importorskip("onnx")
    want = {p.key: p.value for p in onnx.load(str(ssd300_onnx), load_external_data=False).metadata_props}
    assert read_onnx_metadata(ssd300_onnx) == want and "ssd_deploy.config" in want


def test_fp32_matches_onnxruntime(ov, ssd300_onnx):
    from ssd_deploy.runtime.onnxrt import OnnxRuntimeBackend

    ort = OnnxRuntimeBackend(ssd300_onnx, device="cpu")
    x = _batch(2)
    loc_o, conf_o = ov.run(x)
    loc_r, conf_r = ort.run(x)
    assert loc_o.shape == loc_r.shape and conf_o.shape == conf_r.shape
    # FP32 hint: only float reassociation differs (ssd-check's fp32 limits are 1e-3 / 1e-4).
    assert np.abs(loc_o - loc_r).max() < 1e-3
    assert np.abs(conf_o - conf_r).max() < 1e-4
    assert ov.precision == "fp32" and ov.describe()["inference_precision"] == "f32"


def test_detector_results_match_onnxruntime(ov, ssd300_onnx, sample_paths):
    a = Detector(ov).detect(sample_paths[:2])
    b = Detector.load(ssd300_onnx, device="cpu").detect(sample_paths[:2])
    for ra, rb in zip(a, b):
        ka, kb = ra.above(0.3), rb.above(0.3)
        assert len(ka) == len(kb) and ka.image_size == rb.image_size
        np.testing.assert_allclose(ka.scores, kb.scores, atol=1e-4)
        np.testing.assert_allclose(ka.boxes, kb.boxes, atol=0.05)


def test_eight_threads_share_one_backend(ov):
    inputs = [_batch(1, seed=i) for i in range(8)]
    want = [ov.run(x) for x in inputs]
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            start.wait()
            got[i] = ov.run(inputs[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(8):  # every thread got its own input's result, not a neighbour's
        np.testing.assert_allclose(got[i][0], want[i][0], atol=1e-5)
        np.testing.assert_allclose(got[i][1], want[i][1], atol=1e-6)
    assert 1 <= ov.requests_created <= 8


def test_compiled_model_cache_is_written_and_reused(ssd300_onnx, ov, cache, tmp_path, monkeypatch):
    blobs = list(cache.iterdir())
    assert blobs, "OpenVINO wrote nothing to CACHE_DIR"
    again = OpenVINOBackend(ssd300_onnx, cache_dir=cache)
    assert sorted(cache.iterdir()) == sorted(blobs)  # same model and config: the blob is reused
    np.testing.assert_array_equal(again.run(_batch(1))[1], ov.run(_batch(1))[1])
    # The environment variable moves the default cache; an empty value turns it off.
    monkeypatch.setenv(ov_backend.CACHE_ENV, str(tmp_path / "env_cache"))
    assert ov_backend.default_cache_dir() == str(tmp_path / "env_cache")
    monkeypatch.setenv(ov_backend.CACHE_ENV, "")
    assert ov_backend.default_cache_dir() is None
    monkeypatch.delenv(ov_backend.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ov_backend.default_cache_dir() == str(tmp_path / "xdg" / "ssd_deploy" / "openvino")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert OpenVINOBackend(ssd300_onnx, cache_dir=blocker / "cache").cache_dir is None  # runs uncached


def test_bf16_refused_without_cpu_support(ssd300_onnx, monkeypatch):
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core: ["FP32", "INT8"])
    with pytest.raises(BackendError, match="no BF16 support") as e:
        Detector.load(ssd300_onnx, device="openvino", precision="bf16")
    assert "\n" not in str(e.value)
    with pytest.raises(BackendError, match="not an OpenVINO precision"):
        Detector.load(ssd300_onnx, device="openvino", precision="int4")


def test_bf16_runs_where_the_cpu_has_it(ssd300_onnx, cache, ov):
    if "BF16" not in ov.capabilities:
        pytest.skip("this CPU has no BF16")
    bf = OpenVINOBackend(ssd300_onnx, precision="bf16", cache_dir=cache)
    assert bf.precision == "bf16" and bf.describe()["inference_precision"] == "bf16"
    x = _batch(1)
    conf_bf, conf_fp = bf.run(x)[1], ov.run(x)[1]
    # BF16 keeps 8 mantissa bits: close, but not FP32-exact (ssd-check's bf16 limits apply).
    assert 0 < np.abs(conf_bf - conf_fp).max() < 0.1


def test_precision_needs_openvino(ssd300_onnx):
    with pytest.raises(BackendError, match="needs device='openvino'"):
        Detector.load(ssd300_onnx, device="cpu", precision="bf16")


def test_missing_openvino_is_a_one_line_error(ssd300_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(
        BackendError, match=r"openvino is not installed.*ssd_deploy\[openvino\].*device='cpu'"
    ):
        Detector.load(ssd300_onnx, device="openvino")


def test_device_auto_selection(monkeypatch, ssd300_onnx, cache):
    import importlib.util

    import onnxruntime

    choose = detector_mod.choose_onnx_backend
    assert choose("openvino") == "openvino" and choose("cpu") == "onnxruntime"
    assert choose("cuda") == "onnxruntime"
    assert choose(None) == "openvino" and choose("auto") == "openvino"  # openvino is installed here
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # fmt: skip
    assert choose(None) == "onnxruntime"  # a GPU beats any CPU engine
    assert choose(None, "bf16") == "openvino"  # only OpenVINO has BF16
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    assert choose(None) == "onnxruntime"
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setenv(ov_backend.CACHE_ENV, str(cache))
    det = Detector.load(ssd300_onnx)
    assert det.backend.name == "openvino" and "openvino" in repr(det)
    assert detector_mod.describe_onnx_choice().startswith("OpenVINO ")
    assert detector_mod.describe_onnx_choice("cpu").startswith("ONNX Runtime ")


def test_cli_detect_and_check_with_openvino(ssd300_onnx, sample_paths, tmp_path, capsys, monkeypatch, cache):
    from ssd_deploy.cli import check
    from ssd_deploy.cli import detect as detect_cli

    monkeypatch.setenv(ov_backend.CACHE_ENV, str(cache))
    img = tmp_path / "imgs"
    img.mkdir()
    import shutil

    shutil.copy(sample_paths[0], img / sample_paths[0].name)
    code = detect_cli.main(["--engine", str(ssd300_onnx), str(img), "--device", "openvino",
                            "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "on openvino (fp32)" in capsys.readouterr().out
    code = check.main(["--engine", str(ssd300_onnx), "--images", str(img), "--device", "openvino"])
    assert code == 0, capsys.readouterr()
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core: ["FP32"])
    code = detect_cli.main(
        ["--engine", str(ssd300_onnx), str(img), "--device", "openvino", "--precision", "bf16"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no BF16 support" in err


def test_bench_options_carry_device_and_precision():
    from ssd_deploy.benchmark.runner import backend_options

    assert backend_options("m.onnx", device="openvino", precision="bf16") == {
        "device": "openvino",
        "precision": "bf16",
    }
    assert backend_options("m.xml", device="cpu", precision="bf16") == {"precision": "bf16"}


def test_triton_openvino_backend(ssd300_onnx, tmp_path):
    pytest.importorskip("tritonclient")
    from ssd_deploy.triton import RepoOptions, TritonError, check_repository, generate

    out = tmp_path / "repo"
    report = generate(ssd300_onnx, tmp_path / "fp32", RepoOptions(onnx_backend="openvino"), validate=True)
    assert any("cannot pin FP32" in n for n in report.facts.notes)
    generate(ssd300_onnx, out, RepoOptions(onnx_backend="openvino", bf16=True), validate=True)
    models = check_repository(out)
    eng = models["ssd_engine"]
    assert eng.backend == "openvino" and eng.default_model_filename == "model.onnx" and not eng.platform
    assert (out / "ssd_engine" / "1" / "model.onnx").is_file()
    assert eng.parameters["HINT_BF16"].string_value == "YES"
    (out / "ssd_engine" / "1" / "model.onnx").unlink()
    with pytest.raises(TritonError, match="missing model.onnx"):
        check_repository(out)
    with pytest.raises(TritonError, match="runs the engine on the CPU"):
        generate(ssd300_onnx, tmp_path / "r2", RepoOptions(onnx_backend="openvino", kind="gpu"))
    with pytest.raises(TritonError, match="needs --backend openvino"):
        generate(ssd300_onnx, tmp_path / "r3", RepoOptions(bf16=True))


def test_openvino_backend_is_torch_free(ssd300_onnx, cache):
    code = f"""
import sys
from ssd_deploy.runtime import Detector
det = Detector.load({str(ssd300_onnx)!r}, device="openvino", cache_dir={str(cache)!r})
import numpy as np
det.detect(np.zeros((64, 48, 3), np.uint8))
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH_MODULES", bad, det.backend.name)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "TORCH_MODULES [] openvino" in out.stdout, out.stdout


def test_openvino_ir_round_trip(ssd300_onnx, ov, cache, tmp_path):
    from ssd_deploy.runtime.openvino import save_ir

    xml = save_ir(ssd300_onnx, tmp_path / "ir" / "ssd300.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert sorted(p.name for p in xml.parent.iterdir()) == ["ssd300.bin", "ssd300.xml"]  # no temp left
    det = Detector.load(xml, cache_dir=cache)  # .xml always runs on OpenVINO
    assert det.backend.name == "openvino" and det.config == ov.config and det.backend.precision == "fp32"
    x = _batch(1, seed=3)
    np.testing.assert_allclose(det.backend.run(x)[1], ov.run(x)[1], atol=1e-6)
    with pytest.raises(BackendError, match="must end in .xml"):
        save_ir(ssd300_onnx, tmp_path / "x.bin")


def test_serve_refuses_bf16_before_starting_ray(ssd300_onnx, monkeypatch, capsys):
    pytest.importorskip("ray")
    from ssd_deploy.cli import serve as serve_cli

    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core: ["FP32"])
    code = serve_cli.main(["--engine", str(ssd300_onnx), "--device", "openvino", "--precision", "bf16"])
    assert code == 2 and "no BF16 support" in capsys.readouterr().err


def test_precision_flag_refused_for_other_engines(tmp_path, capsys):
    from ssd_deploy.cli import check
    from ssd_deploy.cli import detect as detect_cli

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    assert detect_cli.main(["--engine", str(plan), "--samples", "--precision", "bf16"]) == 2
    assert "--precision bf16 applies to .onnx/.xml" in capsys.readouterr().err
    assert check.main(["--engine", str(plan), "--device", "openvino"]) == 2
    assert "--device openvino applies to .onnx engines" in capsys.readouterr().err
