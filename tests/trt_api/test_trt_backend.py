"""TensorRTBackend against the fake TensorRT / CUDA layer: manifest checks before loading, binding
by name, dynamic batch and profiles, the context pool under threads, CUDA graphs and their
fallback, resource release, and the one-line errors without TensorRT or a GPU."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from trt_fakes import FakeGpu, cudaError_t, fake_network, install_fake
from trt_onnx import make_ssd_like_onnx

from ssd_deploy.config import preset
from ssd_deploy.runtime.backend import BackendError
from ssd_deploy.runtime.tensorrt.backend import TensorRTBackend
from ssd_deploy.tensorrt import loader
from ssd_deploy.tensorrt.builder import BuildOptions, build_plan, parse_batch_profiles
from ssd_deploy.tensorrt.cuda import Cuda, CudaError, check
from ssd_deploy.tensorrt.manifest import SKIP_CHECK_ENV, ManifestError, manifest_path

VOC = preset("voc300")
P, C = VOC.num_priors, VOC.num_classes


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory) -> Path:
    return make_ssd_like_onnx(tmp_path_factory.mktemp("onnx") / "ssd300.onnx", VOC)


def make_plan(fake, onnx_path: Path, out: Path, batch: str = "1:4:8", **opts) -> Path:
    """Build with the fake TensorRT currently installed (records that GPU and version)."""
    build_plan(
        BuildOptions(onnx=onnx_path, output=out, profiles=parse_batch_profiles(batch), **opts),
        log=lambda m: None,
    )
    return out


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 30, (n, 3, 300, 300)).astype(np.float32)


def assert_matches_network(x: np.ndarray, loc: np.ndarray, conf: np.ndarray) -> None:
    want_loc, want_conf = fake_network(x, P, C)
    np.testing.assert_array_equal(loc, want_loc)
    np.testing.assert_array_equal(conf, want_conf)


@pytest.fixture
def plan(fake, onnx_fp32, tmp_path) -> Path:
    return make_plan(fake, onnx_fp32, tmp_path / "ssd.plan")


# -- running ---------------------------------------------------------------------------------------------
def test_run_returns_each_images_outputs(fake, plan):
    with TensorRTBackend(plan) as be:
        assert (
            be.config == VOC
            and be.precision == "fp32"
            and be.batch_range == (1, 8)
            and be.profiles == [(1, 4, 8)]
        )
        x = images(3, 0)
        loc, conf, times = be.run_timed(x)
        assert loc.dtype == conf.dtype == np.float32 and loc.shape == (3, P, 4) and conf.shape == (3, P, C)
        assert_matches_network(x, loc, conf)
        assert min(times.h2d, times.compute, times.d2h) >= 0 and "pool_wait" in times.extra
        d = be.describe()
        assert (
            d["backend"] == "tensorrt" and d["gpu"] == "NVIDIA Fake GPU" and d["compute_capability"] == "8.9"
        )
        assert d["built_with"] == "11.4.0.106" and d["profiles"] == [[1, 4, 8]] and d["contexts"] == 2


def test_outputs_are_copies_not_views_of_pinned_memory(fake, plan):
    with TensorRTBackend(plan, contexts=1) as be:
        x1, x2 = images(2, 1), images(2, 2)
        loc1, conf1 = be.run(x1)
        be.run(x2)  # reuses the same pinned buffers
        assert_matches_network(x1, loc1, conf1)


def test_tensors_are_bound_by_name(monkeypatch, onnx_fp32, tmp_path):
    fake = install_fake(monkeypatch, io_order=("conf", "priors", "images", "loc"))
    plan = make_plan(fake, onnx_fp32, tmp_path / "order.plan", keep_extra_outputs=True)
    with TensorRTBackend(plan) as be:
        assert [be._engine.get_tensor_name(i) for i in range(4)] == ["conf", "priors", "images", "loc"]
        x = images(2, 3)
        assert_matches_network(x, *be.run(x))  # the fake also checks every IO tensor has an address


def test_dynamic_batch_within_profile_and_out_of_profile_error(fake, plan):
    with TensorRTBackend(plan, contexts=1) as be:
        for n in (1, 8, 5, 2, 8):
            x = images(n, n)
            assert_matches_network(x, *be.run(x))
        with pytest.raises(BackendError) as e:
            be.run(images(9, 0))
        msg = str(e.value)
        assert (
            "batch 9 is outside the engine's batch profiles (1..8)" in msg
            and "--batch" in msg
            and "\n" not in msg
        )
        with pytest.raises(BackendError, match=r"expected images \[N,3,300,300\], got \(2, 3, 200, 200\)"):
            be.run(np.zeros((2, 3, 200, 200), np.float32))
        x = images(2, 4).astype(np.float64)  # converted, not rejected
        assert_matches_network(x.astype(np.float32), *be.run(x))


def test_profile_is_picked_by_batch(fake, onnx_fp32, tmp_path):
    plan = make_plan(fake, onnx_fp32, tmp_path / "two.plan", batch="1:1:2,4:8:16")
    with TensorRTBackend(plan, contexts=1) as be:
        assert be.profiles == [(1, 1, 2), (4, 8, 16)] and be.batch_range == (1, 16)
        for n in (1, 12, 2, 4, 16):
            x = images(n, n)
            assert_matches_network(x, *be.run(x))
            slot = be._slots[0]
            assert slot.context.active_optimization_profile == (0 if n <= 2 else 1)
        with pytest.raises(
            BackendError, match=r"batch 3 is outside the engine's batch profiles \(1..2, 4..16\)"
        ):
            be.run(images(3, 0))


def test_context_pool_runs_threads_in_parallel_without_sharing_a_context(monkeypatch, onnx_fp32, tmp_path):
    contexts = 4
    fake = install_fake(monkeypatch, rendezvous=threading.Barrier(contexts))
    plan = make_plan(fake, onnx_fp32, tmp_path / "pool.plan")
    inputs = [images(1 + i % 4, 100 + i) for i in range(8 * contexts)]
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []
    with TensorRTBackend(plan, contexts=contexts) as be:

        def worker(t: int) -> None:
            try:
                for i in range(t, len(inputs), 8):
                    results[i] = be.run(inputs[i])
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
    # The first 4 fake executions wait at a 4-party barrier: had the pool serialised runs (or handed
    # one context to two threads), the barrier would have broken and those runs failed.
    assert not errors, errors[0]
    assert fake.log.concurrent_violations == []
    assert fake.log.executions == len(inputs)
    for i, x in enumerate(inputs):
        assert_matches_network(x, *results[i])


# -- manifest checks, before deserialising -------------------------------------------------------------------
def _runtime_made(fake) -> bool:
    return "Runtime" in fake.log.constructed


def test_tensorrt_version_mismatch(monkeypatch, onnx_fp32, tmp_path):
    fake = install_fake(monkeypatch, version="11.3.0.20")
    plan = make_plan(fake, onnx_fp32, tmp_path / "old.plan")
    fake = install_fake(monkeypatch)  # this machine: 11.4.0.106
    with pytest.raises(ManifestError) as e:
        TensorRTBackend(plan)
    msg = str(e.value)
    assert "built with TensorRT 11.3.0.20 but this machine has TensorRT 11.4.0.106" in msg
    assert f"rebuild with ssd-build --onnx {onnx_fp32} on this machine" in msg and "\n" not in msg
    assert not _runtime_made(fake)


def test_version_compatible_plan_runs_on_a_later_11x(monkeypatch, onnx_fp32, tmp_path):
    fake = install_fake(monkeypatch, version="11.3.0.20")
    plan = make_plan(fake, onnx_fp32, tmp_path / "vc.plan", version_compatible=True)
    install_fake(monkeypatch)  # 11.4: the fake runtime needs engine_host_code_allowed for it
    with TensorRTBackend(plan) as be:
        x = images(2, 5)
        assert_matches_network(x, *be.run(x))
    fake = install_fake(monkeypatch, version="11.2.0.1")  # older than the build: refused
    with pytest.raises(ManifestError, match="runs on that or a later 11.x release only"):
        TensorRTBackend(plan)
    assert not _runtime_made(fake)


def test_gpu_mismatch(monkeypatch, onnx_fp32, tmp_path):
    fake = install_fake(monkeypatch, FakeGpu(name="NVIDIA A100", major=8, minor=0))
    plan = make_plan(fake, onnx_fp32, tmp_path / "a100.plan")
    fake = install_fake(monkeypatch, FakeGpu(name="NVIDIA H100", major=9, minor=0))
    with pytest.raises(ManifestError) as e:
        TensorRTBackend(plan)
    assert (
        "built for NVIDIA A100 (compute capability 8.0) but this GPU is NVIDIA H100 (compute capability 9.0)"
        in str(e.value)
    )
    assert "--hardware-compat ampere+" in str(e.value) and not _runtime_made(fake)
    # Same architecture, another model: loads, with a note.
    install_fake(monkeypatch, FakeGpu(name="NVIDIA A30", major=8, minor=0))
    with TensorRTBackend(plan) as be:
        assert any("built on NVIDIA A100, running on NVIDIA A30" in n for n in be.describe()["notes"])


def test_hardware_compatible_plan(monkeypatch, onnx_fp32, tmp_path):
    fake = install_fake(monkeypatch, FakeGpu(name="NVIDIA A100", major=8, minor=0))
    plan = make_plan(fake, onnx_fp32, tmp_path / "hc.plan", hardware_compat="ampere+")
    install_fake(monkeypatch, FakeGpu(name="NVIDIA H100", major=9, minor=0))
    TensorRTBackend(plan).close()
    fake = install_fake(monkeypatch, FakeGpu(name="Tesla T4", major=7, minor=5))
    with pytest.raises(
        ManifestError, match=r"built for Ampere or newer GPUs .* Tesla T4 \(compute capability 7.5\)"
    ):
        TensorRTBackend(plan)


def test_missing_or_foreign_manifest(fake, plan, monkeypatch):
    mpath = manifest_path(plan)
    saved = mpath.read_text()
    mpath.unlink()
    with pytest.raises(ManifestError) as e:
        TensorRTBackend(plan)
    assert "no manifest ssd.plan.json" in str(e.value) and SKIP_CHECK_ENV in str(e.value)
    assert not _runtime_made(fake)
    # Escape hatch: unchecked, with the config supplied.
    with TensorRTBackend(plan, check_manifest=False, config=VOC) as be:
        assert be.precision == "unknown"
        x = images(1, 6)
        assert_matches_network(x, *be.run(x))
    monkeypatch.setenv(SKIP_CHECK_ENV, "1")
    with pytest.raises(BackendError, match="pass config="):
        TensorRTBackend(plan)
    monkeypatch.delenv(SKIP_CHECK_ENV)
    # A manifest that belongs to another plan.
    d = json.loads(saved)
    d["plan_sha256"] = "0" * 64
    mpath.write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="describes another plan"):
        TensorRTBackend(plan)
    mpath.write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        TensorRTBackend(plan)


def test_unloadable_plan_is_one_line(fake, plan):
    plan.write_bytes(b"garbage")
    with pytest.raises(ManifestError, match="describes another plan"):
        TensorRTBackend(plan)
    with pytest.raises(BackendError) as e:
        TensorRTBackend(plan, check_manifest=False)
    assert "TensorRT could not load the plan: Serialization assertion failed" in str(e.value)
    assert "\n" not in str(e.value)


# -- CUDA graphs ---------------------------------------------------------------------------------------------
def test_cuda_graph_capture_and_replay_per_batch_size(fake, plan):
    with TensorRTBackend(plan, contexts=1, cuda_graphs=True) as be:
        sequence = [2, 2, 2, 3, 3, 2, 3, 2]
        for i, n in enumerate(sequence):
            x = images(n, 10 + i)
            assert_matches_network(x, *be.run(x))
        # Per size: one warm run + one run inside the capture; every later run replays the graph.
        assert fake.log.executions == 4
        assert fake.gpu.calls["cudaStreamBeginCapture"] == 2
        assert fake.gpu.calls["cudaGraphLaunch"] == len(sequence) - 2
        assert sorted(be._slots[0].graphs) == [2, 3]
        assert "notes" not in be.describe()


def test_cuda_graphs_are_dropped_when_the_profile_changes(fake, onnx_fp32, tmp_path):
    plan = make_plan(fake, onnx_fp32, tmp_path / "two.plan", batch="1:1:2,4:4:8")
    with TensorRTBackend(plan, contexts=1, cuda_graphs=True) as be:
        for i, n in enumerate([2, 2, 4, 2, 2]):
            x = images(n, 20 + i)
            assert_matches_network(x, *be.run(x))
        assert fake.gpu.calls["cudaStreamBeginCapture"] == 2  # batch 2 captured again after the switch back
        assert fake.gpu.live["graphs"] == 1


@pytest.mark.parametrize(
    "failure",
    [
        {"fail": {"cudaStreamBeginCapture": cudaError_t.cudaErrorStreamCaptureUnsupported}},
        {"fail": {"cudaStreamEndCapture": cudaError_t.cudaErrorStreamCaptureInvalidated}},
        {"fail": {"cudaGraphInstantiate": cudaError_t.cudaErrorInvalidValue}},
        {"fail": {"cudaGraphLaunch": cudaError_t.cudaErrorInvalidValue}},
        {"fail_execute_when_capturing": True},
    ],
)
def test_cuda_graph_failure_falls_back_to_execute(monkeypatch, onnx_fp32, tmp_path, failure):
    gpu = FakeGpu(fail={k: int(v) for k, v in failure.get("fail", {}).items()})
    fake = install_fake(
        monkeypatch, gpu, fail_execute_when_capturing=failure.get("fail_execute_when_capturing", False)
    )
    plan = make_plan(fake, onnx_fp32, tmp_path / "g.plan")
    with TensorRTBackend(plan, contexts=1, cuda_graphs=True) as be:
        for i in range(4):
            x = images(2, 30 + i)
            assert_matches_network(x, *be.run(x))
        slot = be._slots[0]
        assert not fake.gpu.is_capturing(slot.stream.handle)
        assert 2 in slot.no_graph and not slot.graphs
        assert any("CUDA graph for batch 2 disabled" in n for n in be.describe()["notes"])
        assert fake.gpu.calls.get("cudaStreamBeginCapture", 0) == 1  # not retried for that size
    assert fake.gpu.live == dict.fromkeys(fake.gpu.live, 0)


# -- lifecycle -----------------------------------------------------------------------------------------------
def test_close_releases_everything_and_is_idempotent(fake, plan):
    be = TensorRTBackend(plan, contexts=3, cuda_graphs=True)
    for n in (1, 1, 4):
        be.run(images(n, n))
    assert fake.gpu.live["device"] > 0 and fake.gpu.live["host"] > 0
    be.close()
    be.close()
    assert fake.gpu.live == dict.fromkeys(fake.gpu.live, 0)
    with pytest.raises(BackendError, match="closed"):
        be.run(images(1, 0))


def test_failed_setup_frees_what_it_allocated(monkeypatch, onnx_fp32, tmp_path):
    fake = install_fake(monkeypatch)
    plan = make_plan(fake, onnx_fp32, tmp_path / "oom.plan")
    calls = {"n": 0}
    real_malloc = fake.cudart.cudaMalloc

    def flaky_malloc(size):
        calls["n"] += 1
        return (cudaError_t.cudaErrorMemoryAllocation, None) if calls["n"] == 6 else real_malloc(size)

    monkeypatch.setattr(fake.cudart, "cudaMalloc", flaky_malloc)
    with pytest.raises(CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        TensorRTBackend(plan, contexts=2)
    assert fake.gpu.live == dict.fromkeys(fake.gpu.live, 0)


# -- no GPU / no TensorRT / CUDA errors ----------------------------------------------------------------------
def test_no_gpu_is_one_line_and_creates_no_tensorrt_objects(monkeypatch, onnx_fp32, tmp_path):
    fake = install_fake(monkeypatch)
    plan = make_plan(fake, onnx_fp32, tmp_path / "x.plan")
    fake = install_fake(
        monkeypatch, FakeGpu(device_count=0, device_count_error=int(cudaError_t.cudaErrorInsufficientDriver))
    )
    with pytest.raises(loader.TensorRTUnavailable) as e:
        TensorRTBackend(plan)
    assert "no usable NVIDIA GPU: cudaErrorInsufficientDriver" in str(e.value) and "\n" not in str(e.value)
    assert fake.log.constructed == []


def test_real_environment_without_tensorrt_is_one_line(tmp_path):
    """No fakes: this machine has no TensorRT libraries and no GPU."""
    try:
        loader.load_tensorrt()
        Cuda().device_count()
    except loader.TensorRTUnavailable:
        pass
    else:
        pytest.skip("TensorRT and a GPU are usable here")
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"\x00" * 16)
    with pytest.raises(loader.TensorRTUnavailable) as e:
        TensorRTBackend(plan)
    assert str(e.value).count("\n") == 0
    assert "TensorRT is not available" in str(e.value) or "no usable NVIDIA GPU" in str(e.value)


def test_missing_plan_file(fake, tmp_path):
    with pytest.raises(BackendError, match="no such TensorRT plan"):
        TensorRTBackend(tmp_path / "none.plan")


def test_cuda_check_turns_codes_into_one_line_errors(fake):
    rt = fake.cudart
    assert check(rt, (cudaError_t.cudaSuccess, 7), "x") == 7
    assert check(rt, (cudaError_t.cudaSuccess,), "x") is None
    assert check(rt, (cudaError_t.cudaSuccess, 1, 2), "x") == (1, 2)
    with pytest.raises(CudaError) as e:
        check(rt, (cudaError_t.cudaErrorInvalidValue, None), "cudaMemcpyAsync")
    assert (
        str(e.value)
        == "CUDA call cudaMemcpyAsync failed: cudaErrorInvalidValue (fake CUDA error cudaErrorInvalidValue)"
    )
