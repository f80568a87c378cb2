"""Small typed helpers over cuda-python's runtime bindings: device query, pinned host and device
buffers, streams, events and CUDA graphs.

cuda-python returns ``(error, *values)`` tuples instead of raising; :func:`check` turns every
non-success code into a one-line :class:`CudaError`. A :class:`Cuda` instance wraps one bindings
module (the real ``cuda.bindings.runtime`` or a test fake) so nothing here imports CUDA at module
import time.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..runtime.backend import BackendError
from . import loader
from .loader import TensorRTUnavailable


class CudaError(BackendError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


def _error_text(cudart: ModuleType, err: Any) -> str:
    name = getattr(err, "name", None) or str(err)
    try:
        rc, text = cudart.cudaGetErrorString(err)
        if int(rc) == 0 and text:
            return f"{name} ({text.decode() if isinstance(text, bytes) else text})"
    except Exception:  # the message must never hide the original error
        pass
    return str(name)


def check(cudart: ModuleType, result: Any, what: str) -> Any:
    """Unpack a cuda-python result tuple, raising :class:`CudaError` on a non-success code.

    Returns ``None`` for calls that return only the code, the single value for one-value calls and
    the tuple of values otherwise.
    """
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:
        raise CudaError(f"CUDA call {what} failed: {_error_text(cudart, err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class DeviceInfo:
    """What a plan's compatibility depends on."""

    index: int
    name: str
    major: int
    minor: int

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


class HostBuffer:
    """Page-locked (pinned) host memory: async copies from it overlap with compute."""

    def __init__(self, cuda: Cuda, nbytes: int) -> None:
        self._cuda = cuda
        self.nbytes = int(nbytes)
        self.ptr: int = int(cuda.call("cudaMallocHost", cuda.rt.cudaMallocHost(self.nbytes)))
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)
        self._bytes = np.ctypeslib.as_array(raw)

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of the first ``prod(shape)`` elements (no copy; valid until :meth:`free`)."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize > self.nbytes:
            raise CudaError(f"pinned buffer of {self.nbytes} bytes cannot hold {shape} {dt}")
        return self._bytes[: count * dt.itemsize].view(dt).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self._bytes = np.empty(0, np.uint8)
            self._cuda.call("cudaFreeHost", self._cuda.rt.cudaFreeHost(ptr))


class DeviceBuffer:
    """Device memory from ``cudaMalloc``."""

    def __init__(self, cuda: Cuda, nbytes: int) -> None:
        self._cuda = cuda
        self.nbytes = int(nbytes)
        self.ptr: int = int(cuda.call("cudaMalloc", cuda.rt.cudaMalloc(max(self.nbytes, 1))))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self._cuda.call("cudaFree", self._cuda.rt.cudaFree(ptr))


class Event:
    """A timing event."""

    def __init__(self, cuda: Cuda) -> None:
        self._cuda = cuda
        self.handle: Any = cuda.call("cudaEventCreate", cuda.rt.cudaEventCreate())

    def record(self, stream: Stream) -> None:
        self._cuda.call("cudaEventRecord", self._cuda.rt.cudaEventRecord(self.handle, stream.handle))

    def seconds_since(self, start: Event) -> float:
        """Seconds between ``start`` and this event (both recorded and completed)."""
        ms = self._cuda.call(
            "cudaEventElapsedTime", self._cuda.rt.cudaEventElapsedTime(start.handle, self.handle)
        )
        return float(ms) / 1000.0

    def destroy(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self._cuda.call("cudaEventDestroy", self._cuda.rt.cudaEventDestroy(handle))


class Graph:
    """An instantiated CUDA graph captured from one stream."""

    def __init__(self, cuda: Cuda, graph: Any, graph_exec: Any) -> None:
        self._cuda = cuda
        self._graph = graph
        self._exec = graph_exec

    def launch(self, stream: Stream) -> None:
        self._cuda.call("cudaGraphLaunch", self._cuda.rt.cudaGraphLaunch(self._exec, stream.handle))

    def destroy(self) -> None:
        rt = self._cuda.rt
        if self._exec is not None:
            exec_, self._exec = self._exec, None
            self._cuda.call("cudaGraphExecDestroy", rt.cudaGraphExecDestroy(exec_))
        if self._graph is not None:
            graph, self._graph = self._graph, None
            self._cuda.call("cudaGraphDestroy", rt.cudaGraphDestroy(graph))


class Stream:
    """A non-blocking stream (never the legacy default stream, which serialises everything)."""

    def __init__(self, cuda: Cuda) -> None:
        self._cuda = cuda
        rt = cuda.rt
        self.handle: Any = cuda.call(
            "cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        )

    @property
    def ptr(self) -> int:
        """The raw ``cudaStream_t`` value TensorRT's ``execute_async_v3`` takes."""
        return int(self.handle)

    def copy_htod(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int) -> None:
        rt = self._cuda.rt
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._cuda.call("cudaMemcpyAsync", rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self.handle))

    def copy_dtoh(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int) -> None:
        rt = self._cuda.rt
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._cuda.call("cudaMemcpyAsync", rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self.handle))

    def synchronize(self) -> None:
        self._cuda.call("cudaStreamSynchronize", self._cuda.rt.cudaStreamSynchronize(self.handle))

    def capture(self, enqueue: Callable[[], None]) -> Graph:
        """Capture the work ``enqueue`` puts on this stream into an instantiated graph.

        Whatever fails, the stream leaves capture mode before the error propagates, so the
        caller can fall back to running ``enqueue`` directly on the same stream.
        """
        rt = self._cuda.rt
        # Thread-local mode: other threads' CUDA calls (allocations in another pool slot) are not
        # treated as capture violations.
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._cuda.call("cudaStreamBeginCapture", rt.cudaStreamBeginCapture(self.handle, mode))
        try:
            enqueue()
        except BaseException:
            self._abandon_capture()
            raise
        try:
            graph = self._cuda.call("cudaStreamEndCapture", rt.cudaStreamEndCapture(self.handle))
        except CudaError:
            self._cuda.clear_error()
            raise
        if graph is None or not int(graph):
            self._cuda.clear_error()
            raise CudaError("CUDA call cudaStreamEndCapture failed: the capture was invalidated")
        try:
            graph_exec = self._cuda.call("cudaGraphInstantiate", rt.cudaGraphInstantiate(graph, 0))
        except CudaError:
            rt.cudaGraphDestroy(graph)
            self._cuda.clear_error()
            raise
        return Graph(self._cuda, graph, graph_exec)

    def _abandon_capture(self) -> None:
        rt = self._cuda.rt
        try:
            result = rt.cudaStreamEndCapture(self.handle)
            if int(result[0]) == 0 and result[1] is not None and int(result[1]):
                rt.cudaGraphDestroy(result[1])
        finally:
            self._cuda.clear_error()

    def destroy(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self._cuda.call("cudaStreamDestroy", self._cuda.rt.cudaStreamDestroy(handle))


class Cuda:
    """Entry point: ``Cuda()`` loads cuda-python; ``Cuda(module)`` wraps a given bindings module."""

    def __init__(self, rt: ModuleType | None = None) -> None:
        self.rt = rt if rt is not None else loader.load_cudart()

    def call(self, what: str, result: Any) -> Any:
        return check(self.rt, result, what)

    def clear_error(self) -> None:
        """Reset the runtime's last-error state after a failure we recovered from."""
        self.rt.cudaGetLastError()

    def device_count(self) -> int:
        """Number of visible GPUs; raises :class:`TensorRTUnavailable` (one line) when there is none.

        ``cudaGetDeviceCount`` reports a missing driver or GPU as an error code, never a crash,
        which makes it the safe probe to run before any TensorRT object is made.
        """
        result = self.rt.cudaGetDeviceCount()
        err, count = result[0], result[1]
        if int(err) != 0:
            raise TensorRTUnavailable(f"no usable NVIDIA GPU: {_error_text(self.rt, err)}")
        if not count:
            raise TensorRTUnavailable("no usable NVIDIA GPU: cudaGetDeviceCount found 0 devices")
        return int(count)

    def set_device(self, index: int) -> None:
        self.call("cudaSetDevice", self.rt.cudaSetDevice(index))

    def device_info(self, index: int = 0) -> DeviceInfo:
        count = self.device_count()
        if not 0 <= index < count:
            raise TensorRTUnavailable(f"GPU {index} does not exist ({count} visible)")
        prop = self.call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(index))
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return DeviceInfo(index=index, name=str(name), major=int(prop.major), minor=int(prop.minor))

    def host_buffer(self, nbytes: int) -> HostBuffer:
        return HostBuffer(self, nbytes)

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(self, nbytes)

    def stream(self) -> Stream:
        return Stream(self)

    def event(self) -> Event:
        return Event(self)
