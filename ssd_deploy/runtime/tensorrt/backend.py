"""Run a TensorRT plan: one engine, a pool of execution contexts, each with its own stream,
pinned host buffers and device buffers, so concurrent threads run in parallel safely.

Tensors are bound by name (``set_tensor_address`` / ``set_input_shape``), never by binding index.
Buffers are sized once for the largest batch of every profile, so their addresses never change;
a CUDA graph captured for one batch size therefore stays valid until the context switches
optimization profile, when the slot's graphs are dropped and recaptured on demand.

Sharing one optimization profile between concurrently running contexts is allowed since
TensorRT 10 (the 8.6 preview feature PROFILE_SHARING_0806 became the default and is gone from
11's ``PreviewFeature``), so the pool needs only as many profiles as the batch ranges require.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...config import ConfigError, SSDConfig
from ...contract import CONF, INPUT, LOC
from ...errors import one_line
from ...tensorrt import loader
from ...tensorrt.cuda import Cuda, CudaError, DeviceBuffer, Event, Graph, HostBuffer, Stream
from ...tensorrt.manifest import SKIP_CHECK_ENV, ManifestError, check_compatible, manifest_path, read_manifest
from ...tensorrt.trtlog import make_logger
from ..backend import Backend, BackendError, StageTimes

INPUT_NAME = INPUT
OUTPUT_NAMES = (LOC, CONF)


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # engine shape, -1 for the dynamic batch


@dataclass
class _Slot:
    """One execution context and everything it owns; used by one thread at a time."""

    index: int
    context: Any
    stream: Stream
    events: list[Event]
    host: dict[str, HostBuffer]
    device: dict[str, DeviceBuffer]
    profile: int = 0
    batch: int | None = None
    out_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    graphs: dict[int, Graph] = field(default_factory=dict)
    warm: set[int] = field(default_factory=set)
    no_graph: set[int] = field(default_factory=set)

    def drop_graphs(self) -> None:
        for graph in self.graphs.values():
            graph.destroy()
        self.graphs.clear()
        self.warm.clear()


class TensorRTBackend(Backend):
    """A ``.plan`` built by ``ssd-build``.

    Args:
        path: the plan; its manifest ``<plan>.json`` must sit beside it.
        contexts: execution contexts in the pool (parallel ``run`` calls; each costs the engine's
            activation memory on the GPU plus pinned host buffers).
        cuda_graphs: replay a CUDA graph per batch size after one warm run (falls back to plain
            ``execute_async_v3`` if capture fails).
        check_manifest: check TensorRT version and GPU against the manifest before loading
            (also disabled by ``SSD_DEPLOY_SKIP_MANIFEST_CHECK=1``).
        config: the SSD config, needed only for a plan without a manifest.
        device: CUDA device index.
    """

    name = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        contexts: int = 2,
        cuda_graphs: bool = False,
        check_manifest: bool = True,
        config: SSDConfig | None = None,
        device: int = 0,
    ) -> None:
        self.path = str(path)
        self._closed = False
        self._slots: list[_Slot] = []
        self._pool: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._close_lock = threading.Lock()
        self._cuda_graphs = bool(cuda_graphs)
        self._device_index = int(device)
        self._notes: list[str] = []
        self._engine: Any = None
        self._runtime: Any = None
        if contexts < 1:
            raise BackendError(f"{self.path}: contexts must be >= 1, got {contexts}")
        plan = Path(path)
        if not plan.is_file():
            raise BackendError(f"{plan}: no such TensorRT plan (build one with ssd-build)")

        # Environment first: without TensorRT, CUDA or a GPU nothing else matters, and no
        # TensorRT object may be created.
        trt = loader.load_tensorrt()
        self._trt = trt
        self._cuda = Cuda(loader.load_cudart())
        self.device = self._cuda.device_info(self._device_index)
        self._cuda.set_device(self._device_index)

        skip_checks = not check_manifest or os.environ.get(SKIP_CHECK_ENV, "") not in ("", "0")
        manifest = None
        if not skip_checks or manifest_path(plan).is_file():
            try:
                manifest = read_manifest(plan)
            except ManifestError:
                if not skip_checks or config is None:
                    raise
        self.manifest = manifest
        data = plan.read_bytes()
        if manifest is not None and not skip_checks:
            self._notes += check_compatible(
                manifest, plan, str(trt.__version__), self.device.compute_capability,
                gpu_name=self.device.name, plan_sha256=hashlib.sha256(data).hexdigest(),
            )  # fmt: skip
        if config is None:
            if manifest is None:
                raise BackendError(f"{plan}: no manifest to read the SSD config from; pass config=")
            try:
                config = SSDConfig.from_dict(manifest.config)
            except ConfigError as e:
                raise BackendError(f"{manifest_path(plan)}: bad SSD config: {e}") from None
        self.config = config
        self.precision = manifest.precision if manifest is not None else "unknown"
        hint = manifest.rebuild_hint if manifest is not None else "rebuild it with ssd-build"

        self._logger = make_logger(trt)
        try:
            self._runtime = trt.Runtime(self._logger)
            if manifest is not None and manifest.version_compatible:
                # Version-compatible plans carry their own lean runtime, which is host code.
                self._runtime.engine_host_code_allowed = True
            self._engine = self._runtime.deserialize_cuda_engine(data)
        except Exception as e:
            raise BackendError(
                f"{plan}: TensorRT could not load the plan ({type(e).__name__}: {one_line(e)}); {hint}"
            ) from None
        del data
        if self._engine is None:
            raise BackendError(
                f"{plan}: TensorRT could not load the plan: {self._logger.last_error()}; {hint}"
            )
        try:
            self._inspect_engine()
            self._make_slots(int(contexts))
        except BaseException:
            self.close()
            raise

    # -- setup ---------------------------------------------------------------------------------
    def _inspect_engine(self) -> None:
        trt, engine = self._trt, self._engine
        tensors: dict[str, _TensorInfo] = {}
        for i in range(engine.num_io_tensors):
            name = str(engine.get_tensor_name(i))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            tensors[name] = _TensorInfo(
                name, is_input, dtype, tuple(int(d) for d in engine.get_tensor_shape(name))
            )
        inputs = [t for t in tensors.values() if t.is_input]
        if len(inputs) != 1:
            raise BackendError(
                f"{self.path}: expected one input tensor, the engine has {[t.name for t in inputs]}"
            )
        missing = [n for n in OUTPUT_NAMES if n not in tensors or tensors[n].is_input]
        if missing:
            raise BackendError(
                f"{self.path}: the engine has no output(s) {missing}; outputs are "
                f"{[t.name for t in tensors.values() if not t.is_input]}"
            )
        self._tensors = tensors
        self._input = inputs[0]
        c, h, w = self._input.shape[1:]
        if (c, h, w) != (3, self.config.size, self.config.size):
            raise BackendError(
                f"{self.path}: engine input is [N,{c},{h},{w}] but the config says "
                f"[N,3,{self.config.size},{self.config.size}]"
            )
        profiles = []
        for p in range(engine.num_optimization_profiles):
            lo, opt, hi = engine.get_tensor_profile_shape(self._input.name, p)
            profiles.append((int(lo[0]), int(opt[0]), int(hi[0])))
        self.profiles: list[tuple[int, int, int]] = profiles

    def _make_slots(self, n: int) -> None:
        engine, cuda = self._engine, self._cuda
        contexts = []
        for _ in range(n):
            context = engine.create_execution_context()
            if context is None:
                raise BackendError(
                    f"{self.path}: TensorRT could not create execution context {len(contexts) + 1} of {n} "
                    f"({self._logger.last_error('out of GPU memory?')}); use fewer contexts"
                )
            contexts.append(context)
        # Size every buffer for the largest batch of every profile so addresses never change.
        stream = cuda.stream()
        try:
            nbytes = self._max_bytes(contexts[0], stream)
        finally:
            stream.destroy()
        read_back = (self._input.name, *OUTPUT_NAMES)
        for i, context in enumerate(contexts):
            slot = _Slot(
                index=i, context=context, stream=cuda.stream(), events=[cuda.event() for _ in range(4)],
                host={}, device={},
            )  # fmt: skip
            # Registered before allocating, so close() finds and frees a partly built slot.
            self._slots.append(slot)
            self._pool.put(slot)
            for name, size in nbytes.items():
                slot.device[name] = cuda.device_buffer(size)
                if name in read_back:
                    slot.host[name] = cuda.host_buffer(size)
            self._bind_addresses(slot)

    def _max_bytes(self, context: Any, stream: Stream) -> dict[str, int]:
        sizes = dict.fromkeys(self._tensors, 0)
        chw = self._input.shape[1:]
        for p, (_, _, hi) in enumerate(self.profiles):
            if not context.set_optimization_profile_async(p, stream.ptr):
                raise BackendError(f"{self.path}: cannot select profile {p}: {self._logger.last_error()}")
            stream.synchronize()
            if not context.set_input_shape(self._input.name, (hi, *chw)):
                raise BackendError(
                    f"{self.path}: rejected input shape {(hi, *chw)}: {self._logger.last_error()}"
                )
            for name, t in self._tensors.items():
                shape = (hi, *chw) if t.is_input else tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"{self.path}: output {name!r} has a data-dependent shape {shape}")
                sizes[name] = max(sizes[name], int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize)
            self._check_output_shapes(context, hi)
        if len(self.profiles) > 1:  # leave the context where a new slot expects it
            if not context.set_optimization_profile_async(0, stream.ptr):
                raise BackendError(f"{self.path}: cannot select profile 0: {self._logger.last_error()}")
            stream.synchronize()
        return sizes

    def _check_output_shapes(self, context: Any, n: int) -> None:
        cfg = self.config
        want = {LOC: (n, cfg.num_priors, 4), CONF: (n, cfg.num_priors, cfg.num_classes)}
        for name, shape in want.items():
            got = tuple(int(d) for d in context.get_tensor_shape(name))
            if got != shape:
                raise BackendError(
                    f"{self.path}: output {name!r} is {list(got)} but the SSD config implies {list(shape)}"
                )

    def _bind_addresses(self, slot: _Slot) -> None:
        for name, buf in slot.device.items():
            if not slot.context.set_tensor_address(name, buf.ptr):
                raise BackendError(f"{self.path}: cannot bind tensor {name!r}: {self._logger.last_error()}")

    # -- Backend API ---------------------------------------------------------------------------
    @property
    def batch_range(self) -> tuple[int, int | None]:
        """Smallest and largest batch of all profiles (a batch must fit one profile, see :attr:`profiles`)."""
        return (min(p[0] for p in self.profiles), max(p[2] for p in self.profiles))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loc, conf, _ = self.run_timed(images)
        return loc, conf

    def run_timed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, StageTimes]:
        x = self._check_images(images)
        fits = self._fitting_profiles(x.shape[0])
        t0 = time.perf_counter()
        slot = self._acquire()
        waited = time.perf_counter() - t0
        try:
            loc, conf, times = self._run_on(slot, x, fits)
        except BaseException:
            self._quiesce(slot)
            raise
        finally:
            self._pool.put(slot)
        times.extra["pool_wait"] = waited
        return loc, conf, times

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(
            tensorrt=str(self._trt.__version__),
            gpu=self.device.name,
            compute_capability=self.device.compute_capability,
            profiles=[list(p) for p in self.profiles],
            contexts=len(self._slots),
            cuda_graphs=self._cuda_graphs,
        )
        if self._engine is not None:
            d["device_memory_per_context"] = int(self._engine.device_memory_size_v2)
        if self.manifest is not None:
            d.update(built_with=self.manifest.tensorrt_version, built_on=self.manifest.gpu_name,
                     onnx=self.manifest.onnx_path, build_date=self.manifest.build_date)  # fmt: skip
        if self._notes:
            d["notes"] = list(self._notes)
        return d

    def close(self) -> None:
        """Wait for running calls, then free contexts, buffers, streams, engine (idempotent)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for _ in range(len(self._slots)):
            try:
                self._pool.get(timeout=60.0)
            except queue.Empty:
                break
        errors: list[str] = []
        for slot in self._slots:
            for free in (
                slot.drop_graphs, *(e.destroy for e in slot.events), *(b.free for b in slot.host.values()),
                *(b.free for b in slot.device.values()), slot.stream.destroy,
            ):  # fmt: skip
                try:
                    free()
                except CudaError as e:
                    errors.append(str(e))
            slot.context = None  # contexts must go before their engine
        self._slots.clear()
        self._engine = None
        self._runtime = None
        if errors:
            raise BackendError(f"{self.path}: errors while releasing CUDA resources: {errors[0]}")

    # -- internals -----------------------------------------------------------------------------
    def _acquire(self) -> _Slot:
        if self._closed:
            raise BackendError(f"{self.path}: backend is closed")
        slot = self._pool.get()
        if self._closed:
            self._pool.put(slot)
            raise BackendError(f"{self.path}: backend is closed")
        return slot

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        chw = self._input.shape[1:]
        if not isinstance(images, np.ndarray) or images.ndim != 4 or tuple(images.shape[1:]) != chw:
            got = getattr(images, "shape", type(images).__name__)
            raise BackendError(f"{self.path}: expected images [N,{chw[0]},{chw[1]},{chw[2]}], got {got}")
        if not np.can_cast(images.dtype, self._input.dtype, casting="same_kind"):
            raise BackendError(f"{self.path}: images must be numeric, got dtype {images.dtype}")
        return images

    def _fitting_profiles(self, n: int) -> list[int]:
        fits = [i for i, (lo, _, hi) in enumerate(self.profiles) if lo <= n <= hi]
        if not fits:
            ranges = ", ".join(f"{lo}..{hi}" for lo, _, hi in self.profiles)
            raise BackendError(
                f"{self.path}: batch {n} is outside the engine's batch profiles ({ranges}); split the "
                f"batch or rebuild with ssd-build --batch 1:{max(n, 1)}:{max(n, 1)}"
            )
        # Closest optimum first: TensorRT tuned each profile's kernels for its opt batch.
        return sorted(fits, key=lambda i: (abs(self.profiles[i][1] - n), i))

    def _run_on(
        self, slot: _Slot, x: np.ndarray, fits: list[int]
    ) -> tuple[np.ndarray, np.ndarray, StageTimes]:
        if self._device_index != 0:
            self._cuda.set_device(self._device_index)  # the current device is per thread
        n = x.shape[0]
        profile = slot.profile if slot.profile in fits else fits[0]
        context, stream = slot.context, slot.stream
        if profile != slot.profile:
            if not context.set_optimization_profile_async(profile, stream.ptr):
                raise BackendError(
                    f"{self.path}: cannot switch to profile {profile}: {self._logger.last_error()}"
                )
            slot.profile, slot.batch = profile, None
            slot.drop_graphs()
            self._bind_addresses(slot)
        if slot.batch != n:
            if not context.set_input_shape(self._input.name, x.shape):
                raise BackendError(
                    f"{self.path}: TensorRT rejected input shape {x.shape}: {self._logger.last_error()}"
                )
            slot.batch = n
            slot.out_shapes = {
                name: tuple(int(d) for d in context.get_tensor_shape(name)) for name in OUTPUT_NAMES
            }
        host_in = slot.host[self._input.name]
        staged = host_in.view(self._input.dtype, x.shape)
        np.copyto(staged, x, casting="same_kind")  # the one host copy: straight into pinned memory
        ev = slot.events
        ev[0].record(stream)
        stream.copy_htod(slot.device[self._input.name], host_in, staged.nbytes)
        ev[1].record(stream)
        self._enqueue(slot, n)
        ev[2].record(stream)
        nbytes = {}
        for name in OUTPUT_NAMES:
            nbytes[name] = (
                int(np.prod(slot.out_shapes[name], dtype=np.int64)) * self._tensors[name].dtype.itemsize
            )
            stream.copy_dtoh(slot.host[name], slot.device[name], nbytes[name])
        ev[3].record(stream)
        stream.synchronize()
        loc, conf = (
            slot.host[name]
            .view(self._tensors[name].dtype, slot.out_shapes[name])
            .astype(np.float32, copy=True)
            for name in OUTPUT_NAMES
        )
        times = StageTimes(
            h2d=ev[1].seconds_since(ev[0]), compute=ev[2].seconds_since(ev[1]), d2h=ev[3].seconds_since(ev[2])
        )
        return loc, conf, times

    def _execute(self, slot: _Slot) -> None:
        if not slot.context.execute_async_v3(slot.stream.ptr):
            raise BackendError(f"{self.path}: TensorRT execution failed: {self._logger.last_error()}")

    def _enqueue(self, slot: _Slot, n: int) -> None:
        """Plain ``execute_async_v3``, or a CUDA graph of it once this batch size ran warm."""
        if self._cuda_graphs and n not in slot.no_graph:
            graph = slot.graphs.get(n)
            if graph is None and n in slot.warm:
                try:
                    graph = slot.stream.capture(lambda: self._execute(slot))
                except (CudaError, BackendError) as e:
                    self._graph_failed(slot, n, f"capture failed ({e})")
                else:
                    slot.graphs[n] = graph
            if graph is not None:
                try:
                    graph.launch(slot.stream)
                    return
                except CudaError as e:
                    slot.graphs.pop(n, None)
                    self._cuda.clear_error()
                    self._graph_failed(slot, n, f"launch failed ({e})")
                    try:
                        graph.destroy()
                    except CudaError:
                        pass
            else:
                # The first run at a shape lets TensorRT do its lazy setup outside the capture.
                slot.warm.add(n)
        self._execute(slot)

    def _graph_failed(self, slot: _Slot, n: int, why: str) -> None:
        slot.no_graph.add(n)
        note = f"CUDA graph for batch {n} disabled on context {slot.index}: {why}; using execute_async_v3"
        if note not in self._notes:
            self._notes.append(note)

    def _quiesce(self, slot: _Slot) -> None:
        """After an error, wait for queued work so the next user of the slot finds it idle."""
        try:
            slot.stream.synchronize()
        except CudaError:
            self._cuda.clear_error()
