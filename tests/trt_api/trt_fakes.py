"""Fakes of cuda-python's runtime bindings and of the TensorRT module, for behavioural tests
without a GPU. ``test_trt_contract.py`` checks that every public name they define exists in the
real bindings (dumped from cuda-python 13 and TensorRT 11.4) with the same parameter names, so
the fakes cannot drift into an API that does not exist.

The fake GPU keeps "device" memory as host buffers, runs stream work immediately (or records it
while a stream is capturing, for CUDA graphs) and checks every pointer a copy touches. The fake
TensorRT engine computes :func:`fake_network` (an arbitrary but image-dependent function), so tests
can tell which image's result ended up where.
"""

from __future__ import annotations

import ctypes
import enum
import json
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


# ==============================================================================================
# The "network" of the fake engine
# ==============================================================================================
def fake_network(images: np.ndarray, num_priors: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``images [N,3,S,S]`` -> ``loc [N,P,4]``, ``conf [N,P,C]`` (softmax): each image's own result."""
    n = images.shape[0]
    s = images.reshape(n, -1)[:, :16].astype(np.float64).sum(axis=1)
    base = (np.arange(num_priors * 4) % 97 / 97.0).reshape(num_priors, 4)
    loc = (s[:, None, None] * 1e-3 + base[None]).astype(np.float32)
    w = (np.arange(num_priors * num_classes) % 13 / 13.0).reshape(num_priors, num_classes)
    logits = np.sin(s)[:, None, None] * w[None]
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    conf = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return loc, conf


def fake_priors(num_priors: int) -> np.ndarray:
    return (np.arange(num_priors * 4) % 7 / 7.0).reshape(num_priors, 4).astype(np.float32)


# ==============================================================================================
# Fake CUDA runtime (cuda.bindings.runtime)
# ==============================================================================================
class cudaError_t(enum.IntEnum):  # noqa: N801 - names mirror cuda-python
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class _Handle(int):
    """Opaque handle; ``int()`` gives the raw value like cuda-python's handle types."""


@dataclass
class _StreamState:
    capturing: bool = False
    captured: list[Callable[[], None]] = field(default_factory=list)
    capture_thread: int | None = None


@dataclass
class FakeGpu:
    """State of the fake device plus failure injection; shared by the fake CUDA and TensorRT."""

    name: str = "NVIDIA Fake GPU"
    major: int = 8
    minor: int = 9
    device_count: int = 1
    device_count_error: int = 0  # e.g. cudaErrorNoDevice to simulate a machine without a GPU
    #: ``{"cudaStreamBeginCapture": cudaError_t.cudaErrorStreamCaptureUnsupported}``: fail that call.
    fail: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.memory: dict[int, tuple[Any, int, str]] = {}  # ptr -> (buffer, size, "device"/"host")
        self.streams: dict[int, _StreamState] = {}
        self.events: dict[int, float | None] = {}
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.graph_execs: dict[int, list[Callable[[], None]]] = {}
        self.calls: dict[str, int] = {}
        self.last_error = 0
        self._next = 0x1000

    def handle(self) -> _Handle:
        with self.lock:
            self._next += 0x10
            return _Handle(self._next)

    def count(self, name: str) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def injected(self, name: str) -> int:
        self.count(name)
        return int(self.fail.get(name, 0))

    def alloc(self, size: int, kind: str) -> int:
        buf = (ctypes.c_uint8 * max(size, 1))()
        ptr = ctypes.addressof(buf)
        with self.lock:
            self.memory[ptr] = (buf, size, kind)
        return ptr

    def region(self, ptr: int, nbytes: int, kind: str) -> bool:
        """Whether [ptr, ptr+nbytes) lies inside one allocation of ``kind``."""
        with self.lock:
            for start, (_, size, k) in self.memory.items():
                if start <= ptr and ptr + nbytes <= start + size:
                    return k == kind
        return False

    def array(self, ptr: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if not self.region(ptr, nbytes, "device"):
            raise AssertionError(f"fake GPU: {shape} {dt} at {ptr:#x} is not inside device memory")
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        return np.ctypeslib.as_array(raw).view(dt).reshape(shape)

    def enqueue(self, stream: int, work: Callable[[], None]) -> int:
        """Run ``work`` now, or record it while ``stream`` is capturing."""
        st = self.streams.get(int(stream))
        if st is None:
            return int(cudaError_t.cudaErrorInvalidResourceHandle)
        if st.capturing:
            st.captured.append(work)
        else:
            work()
        return 0

    def is_capturing(self, stream: int) -> bool:
        st = self.streams.get(int(stream))
        return bool(st and st.capturing)

    @property
    def live(self) -> dict[str, int]:
        """Resources not released yet (a clean ``close()`` leaves all zero)."""
        with self.lock:
            return {
                "device": sum(1 for _, _, k in self.memory.values() if k == "device"),
                "host": sum(1 for _, _, k in self.memory.values() if k == "host"),
                "streams": len(self.streams), "events": len(self.events),
                "graphs": len(self.graphs), "graph_execs": len(self.graph_execs),
            }  # fmt: skip


@dataclass
class _DeviceProp:
    name: bytes
    major: int
    minor: int


class FakeCudaRuntime:
    """Stands in for ``cuda.bindings.runtime``: same function names and parameter names."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def __init__(self, gpu: FakeGpu) -> None:
        self._gpu = gpu

    def _ret(self, name: str, *values: Any) -> tuple[Any, ...]:
        err = self._gpu.injected(name)
        if err:
            self._gpu.last_error = err
            return (cudaError_t(err), *(None for _ in values))
        return (cudaError_t.cudaSuccess, *values)

    # -- device ---------------------------------------------------------------------------------
    def cudaGetDeviceCount(self):
        g = self._gpu
        g.count("cudaGetDeviceCount")
        if g.device_count_error:
            return (cudaError_t(g.device_count_error), 0)
        return (cudaError_t.cudaSuccess, g.device_count)

    def cudaSetDevice(self, device):
        if not 0 <= int(device) < self._gpu.device_count:
            return (cudaError_t.cudaErrorInvalidDevice,)
        return self._ret("cudaSetDevice")

    def cudaGetDeviceProperties(self, device):
        g = self._gpu
        if not 0 <= int(device) < g.device_count:
            return (cudaError_t.cudaErrorInvalidDevice, None)
        return self._ret("cudaGetDeviceProperties", _DeviceProp(g.name.encode(), g.major, g.minor))

    def cudaGetErrorString(self, error):
        return (cudaError_t.cudaSuccess, f"fake CUDA error {cudaError_t(int(error)).name}".encode())

    def cudaGetLastError(self):
        err, self._gpu.last_error = self._gpu.last_error, 0
        return (cudaError_t(err),)

    # -- memory ---------------------------------------------------------------------------------
    def cudaMallocHost(self, size):
        r = self._ret("cudaMallocHost", 0)
        return r if r[0] else (r[0], self._gpu.alloc(int(size), "host"))

    def cudaMalloc(self, size):
        r = self._ret("cudaMalloc", 0)
        return r if r[0] else (r[0], self._gpu.alloc(int(size), "device"))

    def _free(self, ptr: int, kind: str, name: str) -> tuple[Any, ...]:
        g = self._gpu
        with g.lock:
            rec = g.memory.get(int(ptr))
            if rec is None or rec[2] != kind:
                return (cudaError_t.cudaErrorInvalidValue,)
            del g.memory[int(ptr)]
        return self._ret(name)

    def cudaFreeHost(self, ptr):
        return self._free(ptr, "host", "cudaFreeHost")

    def cudaFree(self, devPtr):  # noqa: N803
        return self._free(devPtr, "device", "cudaFree")

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        g = self._gpu
        err = g.injected("cudaMemcpyAsync")
        if err:
            return (cudaError_t(err),)
        kinds = {cudaMemcpyKind.cudaMemcpyHostToDevice: ("device", "host"),
                 cudaMemcpyKind.cudaMemcpyDeviceToHost: ("host", "device")}  # fmt: skip
        if int(kind) not in kinds:
            return (cudaError_t.cudaErrorInvalidValue,)
        dk, sk = kinds[cudaMemcpyKind(int(kind))]
        dst, src, count = int(dst), int(src), int(count)
        if not (g.region(dst, count, dk) and g.region(src, count, sk)):
            return (cudaError_t.cudaErrorInvalidValue,)
        return (cudaError_t(g.enqueue(stream, lambda: ctypes.memmove(dst, src, count))),)

    # -- streams and events ---------------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags):
        r = self._ret("cudaStreamCreateWithFlags", 0)
        if r[0]:
            return r
        h = self._gpu.handle()
        self._gpu.streams[int(h)] = _StreamState()
        return (cudaError_t.cudaSuccess, h)

    def cudaStreamDestroy(self, stream):
        if self._gpu.streams.pop(int(stream), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return self._ret("cudaStreamDestroy")

    def cudaStreamSynchronize(self, stream):
        st = self._gpu.streams.get(int(stream))
        if st is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if st.capturing:
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return self._ret("cudaStreamSynchronize")

    def cudaEventCreate(self):
        h = self._gpu.handle()
        self._gpu.events[int(h)] = None
        return self._ret("cudaEventCreate", h)

    def cudaEventRecord(self, event, stream):
        g = self._gpu
        if int(event) not in g.events:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)

        def stamp() -> None:
            g.events[int(event)] = time.perf_counter()

        return (cudaError_t(g.enqueue(stream, stamp)),)

    def cudaEventElapsedTime(self, start, end):
        g = self._gpu
        t0, t1 = g.events.get(int(start)), g.events.get(int(end))
        if t0 is None or t1 is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle, 0.0)
        return (cudaError_t.cudaSuccess, (t1 - t0) * 1000.0)

    def cudaEventDestroy(self, event):
        if self._gpu.events.pop(int(event), "missing") == "missing":
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return self._ret("cudaEventDestroy")

    # -- graphs ---------------------------------------------------------------------------------
    def cudaStreamBeginCapture(self, stream, mode):
        r = self._ret("cudaStreamBeginCapture")
        if r[0]:
            return r
        st = self._gpu.streams.get(int(stream))
        if st is None or st.capturing:
            return (cudaError_t.cudaErrorInvalidValue,)
        st.capturing, st.captured, st.capture_thread = True, [], threading.get_ident()
        return r

    def cudaStreamEndCapture(self, stream):
        g = self._gpu
        st = g.streams.get(int(stream))
        if st is None or not st.capturing:
            return (cudaError_t.cudaErrorInvalidValue, None)
        work, st.capturing, st.captured = st.captured, False, []
        err = g.injected("cudaStreamEndCapture")
        if err:
            return (cudaError_t(err), None)
        h = g.handle()
        g.graphs[int(h)] = work
        return (cudaError_t.cudaSuccess, h)

    def cudaGraphInstantiate(self, graph, flags):
        g = self._gpu
        if int(graph) not in g.graphs:
            return (cudaError_t.cudaErrorInvalidValue, None)
        r = self._ret("cudaGraphInstantiate", 0)
        if r[0]:
            return r
        h = g.handle()
        g.graph_execs[int(h)] = list(g.graphs[int(graph)])
        return (cudaError_t.cudaSuccess, h)

    def cudaGraphLaunch(self, graphExec, stream):  # noqa: N803
        g = self._gpu
        work = g.graph_execs.get(int(graphExec))
        if work is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        err = g.injected("cudaGraphLaunch")
        if err:
            return (cudaError_t(err),)

        def replay() -> None:
            for w in work:
                w()

        return (cudaError_t(g.enqueue(stream, replay)),)

    def cudaGraphExecDestroy(self, graphExec):  # noqa: N803
        if self._gpu.graph_execs.pop(int(graphExec), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(self, graph):
        if self._gpu.graphs.pop(int(graph), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)


# ==============================================================================================
# Fake TensorRT
# ==============================================================================================
PLAN_MAGIC = b"FAKEPLAN1\n"


@dataclass
class TrtLog:
    """What the fake TensorRT module saw (shared by everything one fake module creates)."""

    constructed: list[str] = field(default_factory=list)
    executions: int = 0
    concurrent_violations: list[str] = field(default_factory=list)
    parsed: list[str] = field(default_factory=list)
    built_configs: list[dict[str, Any]] = field(default_factory=list)


def make_fake_tensorrt(
    gpu: FakeGpu,
    version: str = "11.4.0.106",
    *,
    unsupported_ops: tuple[str, ...] = ("FakeUnsupportedOp",),
    rendezvous: threading.Barrier | None = None,
    fail_execute_when_capturing: bool = False,
    io_order: tuple[str, ...] = ("images", "loc", "conf", "priors"),
    exec_delay: float = 0.0,
) -> types.ModuleType:
    """A module with the subset of the TensorRT 11 Python API that ssd_deploy uses.

    ``rendezvous``: the first ``parties`` executions wait at this barrier together (proves that
    many contexts ran at once; later ones do not wait, so uneven thread progress cannot deadlock).
    ``fail_execute_when_capturing``: ``execute_async_v3`` returns False on a capturing stream.
    ``io_order``: order in which the engine lists its IO tensors (binding must go by name).
    """
    log = TrtLog()
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod._log = log  # type: ignore[attr-defined]

    class DataType(enum.IntEnum):
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 0

    class BuilderFlag(enum.IntEnum):
        VERSION_COMPATIBLE = 12

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class HardwareCompatibilityLevel(enum.IntEnum):
        NONE = 0
        AMPERE_PLUS = 1
        SAME_COMPUTE_CAPABILITY = 2

    class ExecutionContextAllocationStrategy(enum.IntEnum):
        STATIC = 0

    def nptype(trt_type):
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
                DataType.INT32: np.int32}[trt_type]  # fmt: skip

    class Dims:
        def __init__(self, shape=()):
            self._d = tuple(int(v) for v in shape)

        def __len__(self) -> int:
            return len(self._d)

        def __getitem__(self, i):
            return self._d[i]

        def __iter__(self):
            return iter(self._d)

        def __eq__(self, other: object) -> bool:
            return tuple(self) == tuple(other)  # type: ignore[arg-type]

        def __repr__(self) -> str:
            return f"Dims{self._d}"

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            log.constructed.append("ILogger")

        def log(self, severity, msg):
            pass

    ILogger.Severity = Severity  # type: ignore[attr-defined]

    class IProgressMonitor:
        def __init__(self):
            pass

        def phase_start(self, phase_name, parent_phase, num_steps):
            pass

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            pass

    def _err(logger: Any, msg: str) -> None:
        logger.log(Severity.ERROR, msg)

    class IHostMemory(bytes):
        """Bytes with the buffer protocol, like the real IHostMemory."""

        @property
        def nbytes(self):
            return len(self)

    # -- network, parser ------------------------------------------------------------------------
    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self._name, self._shape, self._dtype = name, shape, dtype

        @property
        def name(self):
            return self._name

        @property
        def shape(self):
            return Dims(self._shape)

        @property
        def dtype(self):
            return self._dtype

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self._flags = flags
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._meta: dict[str, Any] = {}

        @property
        def num_inputs(self):
            return len(self._inputs)

        @property
        def num_outputs(self):
            return len(self._outputs)

        def get_input(self, index):
            return self._inputs[index]

        def get_output(self, index):
            return self._outputs[index]

        def unmark_output(self, tensor):
            self._outputs.remove(tensor)

    class ParserError:
        def __init__(self, desc: str, node: int, node_name: str, node_operator: str) -> None:
            self._d = (desc, node, node_name, node_operator)

        def desc(self):
            return self._d[0]

        def node(self):
            return self._d[1]

        def node_name(self):
            return self._d[2]

        def node_operator(self):
            return self._d[3]

    class OnnxParser:
        def __init__(self, network, logger):
            log.constructed.append("OnnxParser")
            self._network, self._logger = network, logger
            self._errors: list[ParserError] = []

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, index):
            return self._errors[index]

        def parse_from_file(self, model):
            import onnx

            log.parsed.append(str(model))
            m = onnx.load(model, load_external_data=False)
            for i, node in enumerate(m.graph.node):
                if node.op_type in unsupported_ops:
                    self._errors.append(
                        ParserError(
                            f"No importer registered for op: {node.op_type}", i, node.name, node.op_type
                        )
                    )
            if self._errors:
                return False
            inits = {t.name for t in m.graph.initializer}
            elem = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF}
            for vi, dest in [(i, self._network._inputs) for i in m.graph.input if i.name not in inits] + [
                (o, self._network._outputs) for o in m.graph.output
            ]:
                dims = tuple(
                    d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim
                )
                dest.append(ITensor(vi.name, dims, elem.get(vi.type.tensor_type.elem_type, DataType.FLOAT)))
            self._network._meta = {p.key: p.value for p in m.metadata_props}
            return True

    # -- builder --------------------------------------------------------------------------------
    class IOptimizationProfile:
        def __init__(self) -> None:
            self._shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - real parameter names
            lo, mid, hi = (tuple(d) for d in (min, opt, max))
            if not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
                raise ValueError("fake: min <= opt <= max violated")
            self._shapes[input] = (Dims(lo), Dims(mid), Dims(hi))

        def get_shape(self, input):  # noqa: A002
            return list(self._shapes[input])

    class ITimingCache:
        def __init__(self, device: str, entries: int) -> None:
            self._device, self._entries = device, entries

        def serialize(self):
            return IHostMemory(f"FAKECACHE|{self._device}|{self._entries}".encode())

    class IBuilderConfig:
        def __init__(self) -> None:
            self._pools: dict[int, int] = {}
            self._flags: set[int] = set()
            self._profiles: list[IOptimizationProfile] = []
            self._opt_level = 3
            self._hw = HardwareCompatibilityLevel.NONE
            self._monitor: Any = None
            self._cache: ITimingCache | None = None

        def set_memory_pool_limit(self, pool, pool_size):
            self._pools[int(pool)] = int(pool_size)

        def get_memory_pool_limit(self, pool):
            return self._pools.get(int(pool), 1 << 40)

        def set_flag(self, flag):
            if not isinstance(flag, BuilderFlag):
                raise TypeError("set_flag(): incompatible function arguments")
            self._flags.add(int(flag))

        def get_flag(self, flag):
            return int(flag) in self._flags

        @property
        def builder_optimization_level(self):
            return self._opt_level

        @builder_optimization_level.setter
        def builder_optimization_level(self, value):
            self._opt_level = int(value)

        @property
        def hardware_compatibility_level(self):
            return self._hw

        @hardware_compatibility_level.setter
        def hardware_compatibility_level(self, value):
            if not isinstance(value, HardwareCompatibilityLevel):
                raise TypeError("incompatible function arguments")
            self._hw = value

        @property
        def progress_monitor(self):
            return self._monitor

        @progress_monitor.setter
        def progress_monitor(self, value):
            self._monitor = value

        @property
        def num_optimization_profiles(self):
            return len(self._profiles)

        def add_optimization_profile(self, profile):
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            data = bytes(serialized_timing_cache)
            if not data:
                return ITimingCache(f"{gpu.name}/{gpu.major}.{gpu.minor}", 0)
            parts = data.decode(errors="replace").split("|")
            if len(parts) != 3 or parts[0] != "FAKECACHE":
                raise RuntimeError("fake: timing cache is corrupt")
            return ITimingCache(parts[1], int(parts[2]))

        def set_timing_cache(self, cache, ignore_mismatch):
            here = f"{gpu.name}/{gpu.major}.{gpu.minor}"
            if cache._device != here and not ignore_mismatch:
                return False
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    class Builder:
        def __init__(self, logger):
            log.constructed.append("Builder")
            self._logger = logger

        def create_network(self, flags=0):
            return INetworkDefinition(int(flags))

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            mon = config._monitor
            if mon is not None:
                mon.phase_start("Building engine", None, 2)
                mon.phase_start("Tactic selection", "Building engine", 3)
                for i in range(3):
                    mon.step_complete("Tactic selection", i)
                mon.phase_finish("Tactic selection")
                mon.step_complete("Building engine", 1)
                mon.phase_finish("Building engine")
            if not config._profiles:
                _err(
                    self._logger,
                    "Network has dynamic or shape inputs, but no optimization profile has been defined.",
                )
                return None
            inp = network.get_input(0)
            for p in config._profiles:
                if inp.name not in p._shapes:
                    _err(self._logger, f"profile is missing input {inp.name}")
                    return None
            if config._cache is not None:
                config._cache._entries += 1
            meta = network._meta
            cfg = json.loads(meta["ssd_deploy.config"])
            prior_count = _num_priors(cfg)
            size = int(cfg["size"])
            log.built_configs.append({
                "flags": sorted(config._flags), "opt_level": config._opt_level, "hw": int(config._hw),
                "pools": dict(config._pools), "network_flags": network._flags,
            })  # fmt: skip
            plan = {
                "version": version,
                "version_compatible": int(BuilderFlag.VERSION_COMPATIBLE) in config._flags,
                "profiles": [[d[0] for d in p._shapes[inp.name]] for p in config._profiles],
                "input": inp.name, "size": size, "num_priors": prior_count,
                "num_classes": int(cfg["num_classes"]),
                "outputs": [o.name for o in network._outputs],
            }  # fmt: skip
            return IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())

    # -- runtime --------------------------------------------------------------------------------
    class Runtime:
        def __init__(self, logger):
            log.constructed.append("Runtime")
            self._logger = logger
            self._host_code = False

        @property
        def engine_host_code_allowed(self):
            return self._host_code

        @engine_host_code_allowed.setter
        def engine_host_code_allowed(self, value):
            self._host_code = bool(value)

        def deserialize_cuda_engine(self, serialized_engine):
            data = bytes(serialized_engine)
            if not data.startswith(PLAN_MAGIC):
                _err(self._logger, "Serialization assertion failed: magic tag does not match")
                return None
            plan = json.loads(data[len(PLAN_MAGIC) :])
            if plan["version"] != version and not (plan["version_compatible"] and self._host_code):
                _err(self._logger, f"The engine plan file is not compatible with this version of TensorRT, "
                                   f"expecting library version {version} got {plan['version']}")  # fmt: skip
                return None
            return ICudaEngine(plan, self._logger)

    class ICudaEngine:
        def __init__(self, plan: dict[str, Any], logger: Any) -> None:
            self._plan, self._logger = plan, logger
            p, c, s = plan["num_priors"], plan["num_classes"], plan["size"]
            shapes = {plan["input"]: (-1, 3, s, s), "loc": (-1, p, 4), "conf": (-1, p, c), "priors": (p, 4)}
            names = [n for n in io_order if n in shapes and (n == plan["input"] or n in plan["outputs"])]
            self._io = [(n, shapes[n]) for n in names]
            self._input = plan["input"]
            self._contexts = 0

        @property
        def num_io_tensors(self):
            return len(self._io)

        def get_tensor_name(self, index):
            return self._io[index][0]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == self._input else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def get_tensor_shape(self, name):
            return Dims(dict(self._io)[name])

        @property
        def num_optimization_profiles(self):
            return len(self._plan["profiles"])

        def get_tensor_profile_shape(self, name, profile_index):
            lo, opt, hi = self._plan["profiles"][profile_index]
            s = self._plan["size"]
            return [Dims((b, 3, s, s)) for b in (lo, opt, hi)]

        @property
        def device_memory_size_v2(self):
            return 1 << 20

        def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
            self._contexts += 1
            return IExecutionContext(self, self._contexts - 1)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine, index: int) -> None:
            self._engine, self._index = engine, index
            self._profile = 0
            self._shape: tuple[int, ...] | None = None
            self._addr: dict[str, int] = {}
            self._busy = threading.Lock()

        @property
        def active_optimization_profile(self):
            return self._profile

        def set_optimization_profile_async(self, profile_index, stream_handle):
            if not 0 <= profile_index < self._engine.num_optimization_profiles:
                return False
            self._profile, self._shape = int(profile_index), None
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = self._engine._plan["profiles"][self._profile]
            shape = tuple(int(d) for d in shape)
            if name != self._engine._input or not lo <= shape[0] <= hi:
                _err(
                    self._engine._logger,
                    f"setInputShape: {shape} outside profile {self._profile} [{lo}, {hi}]",
                )
                return False
            self._shape = shape
            return True

        def get_tensor_shape(self, name):
            shape = dict(self._engine._io)[name]
            n = self._shape[0] if self._shape else -1
            return Dims(tuple(n if d == -1 else d for d in shape))

        def set_tensor_address(self, name, memory):
            if name not in dict(self._engine._io):
                return False
            self._addr[name] = int(memory)
            return True

        def get_tensor_address(self, name):
            return self._addr.get(name, 0)

        def execute_async_v3(self, stream_handle):
            engine = self._engine
            if self._shape is None or any(n not in self._addr for n, _ in engine._io):
                _err(engine._logger, "enqueueV3: not all input shapes / tensor addresses are set")
                return False
            if fail_execute_when_capturing and gpu.is_capturing(stream_handle):
                _err(engine._logger, "enqueueV3: operation not permitted when stream is capturing")
                return False
            if not self._busy.acquire(blocking=False):
                log.concurrent_violations.append(f"context {self._index} used by two threads at once")
                return False
            try:
                with gpu.lock:
                    log.executions += 1
                    number = log.executions
                if rendezvous is not None and number <= rendezvous.parties:
                    rendezvous.wait(timeout=30)
                if exec_delay:
                    time.sleep(exec_delay)
                n = self._shape[0]
                plan = engine._plan
                addr = dict(self._addr)
                shapes = {name: tuple(n if d == -1 else d for d in shape) for name, shape in engine._io}

                def compute() -> None:  # what the kernels do; bakes in n and the addresses
                    x = gpu.array(addr[engine._input], np.float32, shapes[engine._input])
                    loc, conf = fake_network(x, plan["num_priors"], plan["num_classes"])
                    gpu.array(addr["loc"], np.float32, shapes["loc"])[...] = loc
                    gpu.array(addr["conf"], np.float32, shapes["conf"])[...] = conf
                    if "priors" in addr:
                        gpu.array(addr["priors"], np.float32, shapes["priors"])[...] = fake_priors(
                            plan["num_priors"]
                        )

                return gpu.enqueue(stream_handle, compute) == 0
            finally:
                self._busy.release()

    for obj in (DataType, TensorIOMode, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType,
                HardwareCompatibilityLevel, ExecutionContextAllocationStrategy, Dims, ILogger,
                IProgressMonitor, IHostMemory, ITensor, INetworkDefinition, ParserError, OnnxParser,
                IOptimizationProfile, ITimingCache, IBuilderConfig, Builder, Runtime, ICudaEngine,
                IExecutionContext):  # fmt: skip
        obj.__module__ = "tensorrt"
        setattr(mod, obj.__name__, obj)
    mod.nptype = nptype  # type: ignore[attr-defined]
    mod.float32 = DataType.FLOAT  # type: ignore[attr-defined]
    mod.float16 = DataType.HALF  # type: ignore[attr-defined]
    return mod


def _num_priors(cfg: dict[str, Any]) -> int:
    p = cfg["prior"]
    return sum(f * f * (2 + 2 * len(ar)) for f, ar in zip(p["feature_maps"], p["aspect_ratios"]))


# ==============================================================================================
# Installing the fakes
# ==============================================================================================
@dataclass
class Fake:
    gpu: FakeGpu
    cudart: FakeCudaRuntime
    trt: Any

    @property
    def log(self) -> TrtLog:
        return self.trt._log


def install_fake(monkeypatch: Any, gpu: FakeGpu | None = None, **trt_options: Any) -> Fake:
    """Patch the fakes into ``ssd_deploy.tensorrt.loader`` (where all code loads them)."""
    from ssd_deploy.tensorrt import loader

    gpu = gpu or FakeGpu()
    cudart = FakeCudaRuntime(gpu)
    trt = make_fake_tensorrt(gpu, **trt_options)
    monkeypatch.setattr(loader, "load_tensorrt", lambda: trt)
    monkeypatch.setattr(loader, "load_cudart", lambda: cudart)
    return Fake(gpu, cudart, trt)
