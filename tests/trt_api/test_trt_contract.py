"""ssd_deploy's TensorRT and CUDA code, and the test fakes, held to the real API surfaces of
TensorRT 11.4 (``tensorrt_bindings``) and cuda-python (``cuda.bindings.runtime``)."""

from __future__ import annotations

import enum
import types
from pathlib import Path

import pytest
import trt_contract as tc
import trt_fakes as tf

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "ssd_deploy"


@pytest.fixture(scope="module")
def surfaces(trt_surface, cudart_surface) -> tc.Surfaces:
    return tc.Surfaces(trt_surface, cudart_surface)


def _project_files() -> list[Path]:
    # The library, and the test helper that runs real plans on a GPU (trt_all_outputs.py).
    files = [*sorted(SRC.rglob("*.py")), Path(__file__).with_name("trt_all_outputs.py")]
    return [p for p in files if tc.uses_tensorrt(p.read_text())]


# -- facts about 11.4 the design relies on ---------------------------------------------------------
def test_surface_is_tensorrt_11_4_without_the_removed_api(trt_surface):
    names = trt_surface["names"]
    assert trt_surface["version"].startswith("11.4")
    assert len(trt_surface["stubs"]) == 3  # libnvinfer, libnvonnxparser, libnvinfer_plugin stand-ins
    builder_flags = names["BuilderFlag"]["members"]
    assert (
        "FP16" not in builder_flags and "INT8" not in builder_flags and "VERSION_COMPATIBLE" in builder_flags
    )
    net_flags = names["NetworkDefinitionCreationFlag"]["members"]
    assert "EXPLICIT_BATCH" not in net_flags
    assert net_flags["STRONGLY_TYPED"]["deprecated"]  # exists, ignored: builder passes no flag on 11
    assert "int8_calibrator" not in names["IBuilderConfig"]["attrs"]
    assert not any(n.startswith("IInt8") for n in names)  # calibrator classes are gone
    assert "platform_has_fast_fp16" not in names["Builder"]["attrs"]
    assert "device_memory_size" not in names["ICudaEngine"]["attrs"]
    assert "device_memory_size_v2" in names["ICudaEngine"]["attrs"]
    assert "execute_async_v2" not in names["IExecutionContext"]["attrs"]
    # Parser errors can name the node and its operator.
    assert {"desc", "node", "node_name", "node_operator"} <= set(names["ParserError"]["attrs"])
    # The serialized plan supports the buffer protocol (the builder writes memoryview(plan)).
    assert names["IHostMemory"]["buffer"]
    # Contexts may share a profile: the 8.6 opt-in preview feature is the default and gone in 11.
    assert "PROFILE_SHARING_0806" not in names["PreviewFeature"]["members"]


def test_cudart_surface_has_the_calls_we_make(cudart_surface):
    names = cudart_surface["names"]
    for fn in (
        "cudaGetDeviceCount",
        "cudaMallocHost",
        "cudaMemcpyAsync",
        "cudaStreamBeginCapture",
        "cudaGraphLaunch",
    ):
        assert names[fn]["kind"] == "function"
    assert "cudaStreamCaptureModeThreadLocal" in names["cudaStreamCaptureMode"]["members"]


# -- the project's code --------------------------------------------------------------------------------
def test_project_uses_only_api_that_exists_in_tensorrt_11_4(surfaces):
    files = _project_files()
    assert any(p.name == "builder.py" for p in files) and any(p.name == "backend.py" for p in files)
    used: set[str] = set()
    findings = tc.check_paths(files, surfaces, ROOT, used=used)
    assert not findings, "\n".join(map(str, findings))
    # The scan must actually see the calls that matter, or passing would prove nothing.
    expected = {
        "Builder.build_serialized_network", "Builder.create_network", "IBuilderConfig.set_timing_cache",
        "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.builder_optimization_level",
        "IBuilderConfig.hardware_compatibility_level", "IBuilderConfig.progress_monitor",
        "IOptimizationProfile.set_shape", "OnnxParser.parse_from_file", "ParserError.node_operator",
        "ParserError.node_name", "Runtime.deserialize_cuda_engine", "ICudaEngine.get_tensor_profile_shape",
        "ICudaEngine.create_execution_context", "IExecutionContext.set_input_shape",
        "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3",
        "IExecutionContext.set_optimization_profile_async", "ITimingCache.serialize",
        "IProgressMonitor.__init__",
        "cudart.cudaMemcpyAsync", "cudart.cudaMallocHost", "cudart.cudaStreamBeginCapture",
        "cudart.cudaGraphInstantiate", "cudart.cudaEventElapsedTime", "cudart.cudaGetDeviceCount",
    }  # fmt: skip
    assert expected <= used, sorted(expected - used)


def test_checker_rejects_removed_and_misused_api(surfaces):
    src = """
def build(trt, rt, logger):
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    builder_config = builder.create_builder_config()
    builder_config.set_flag(trt.BuilderFlag.FP16)
    builder_config.int8_calibrator = None
    builder_config.set_flag(trt.MemoryPoolType.WORKSPACE)
    fast = builder.platform_has_fast_fp16
    engine = trt.Runtime(logger).deserialize_cuda_engine(b"")
    size = engine.device_memory_size
    count = engine.num_io_tensors()
    context = engine.create_execution_context()
    context.execute_async_v2([0, 0], 0)
    context.set_tensor_address("images")
    engine.num_io_tensors = 3
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    rt.cudaMemcpyAsync(0, 0, 4, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)
    rt.cudaMallocPitchy(3)

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            pass

        def step_completed(self, phase_name, step):
            return True

        def phase_start(self, phase_name, num_steps):
            pass
"""
    found = [f"{f.line}: {f.message}" for f in tc.check_source(src, "snippet.py", surfaces)]
    expect = {
        4: "EXPLICIT_BATCH does not exist", 6: "BuilderFlag.FP16 does not exist",
        7: "no attribute 'int8_calibrator'", 8: "set_flag(...) with 1 positional",
        9: "no attribute 'platform_has_fast_fp16'",
        11: "no attribute 'device_memory_size'", 12: "is a property, not a method",
        14: "no attribute 'execute_async_v2'", 15: "set_tensor_address(...) with 1 positional",
        16: "is read-only", 17: "STRONGLY_TYPED is deprecated", 18: "cudaMemcpyAsync(...) with 4 positional",
        19: "cudaMallocPitchy does not exist",
        22: "must call trt.IProgressMonitor.__init__", 25: "has 'step_complete', not 'step_completed'",
        28: "phase_start takes 2 arguments",
    }  # fmt: skip
    for line, text in expect.items():
        assert any(f.startswith(f"{line}: ") and text in f for f in found), (line, text, found)
    assert len(found) == len(expect), found


def test_deprecated_api_passes_only_with_a_compat_marker(surfaces):
    src = (
        "def f(trt):\n"
        "    # trt-compat: TensorRT 10 needs it\n"
        "    a = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)\n"
        "    b = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)\n"
    )
    found = tc.check_source(src, "s.py", surfaces)
    assert [f.line for f in found] == [4]


def test_checker_flags_tensorrt_calls_on_receivers_it_cannot_type(surfaces):
    src = "def f(eng, ctx):\n    n = eng.num_io_tensors\n    ctx.execute_async_v3(0)\n    return n\n"
    found = tc.check_source(src, "s.py", surfaces)
    assert {f.line for f in found} == {2, 3}
    assert all("cannot type" in f.message for f in found)


# -- the fakes -------------------------------------------------------------------------------------------
def test_fake_tensorrt_defines_only_real_api(trt_surface):
    fake = tf.make_fake_tensorrt(tf.FakeGpu())
    assert tc.check_fake(fake, trt_surface, "trt") == []


def test_fake_cuda_runtime_defines_only_real_api(cudart_surface):
    assert tc.check_fake(tf.FakeCudaRuntime(tf.FakeGpu()), cudart_surface, "cudart") == []


def test_fake_check_catches_drift(trt_surface, cudart_surface):
    class BuilderFlag(enum.IntEnum):
        FP16 = 0
        VERSION_COMPATIBLE = 3

    class IExecutionContext:
        def execute_async_v2(self, bindings, stream_handle):
            return True

        def set_tensor_address(self, name, ptr):
            return True

        @property
        def num_io_tensors(self):
            return 0

    class ICudaEngine:
        @property
        def num_io_tensors(self):
            return 0

        @num_io_tensors.setter
        def num_io_tensors(self, value):
            pass

    drifted = types.SimpleNamespace(BuilderFlag=BuilderFlag, IExecutionContext=IExecutionContext,
                                    ICudaEngine=ICudaEngine, make_engine=lambda: None)  # fmt: skip
    problems = "\n".join(tc.check_fake(drifted, trt_surface, "trt"))
    for text in ("BuilderFlag.FP16 does not exist", "VERSION_COMPATIBLE = 3, the real value is 12",
                 "execute_async_v2 does not exist", "set_tensor_address(name, ptr) matches no real signature",
                 "IExecutionContext.num_io_tensors does not exist", "num_io_tensors is writable in the fake",
                 "trt.make_engine does not exist"):  # fmt: skip
        assert text in problems, problems

    class Cudart:
        def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
            return (0,)

    problems = tc.check_fake(Cudart(), cudart_surface, "cudart")
    assert (
        problems
        and "cudaMemcpyAsync(dst, src, nbytes, kind, stream) matches no real signature" in problems[0]
    )
