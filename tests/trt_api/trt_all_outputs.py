"""Run a plan once and read back every output tensor by name: for checking end-to-end engines
(``detections``/``num_detections``, docs/end_to_end.md) against the numpy Detect. Not a serving
path: :class:`~ssd_deploy.runtime.tensorrt.backend.TensorRTBackend` is (it reads ``loc``/``conf``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssd_deploy.runtime.backend import BackendError
from ssd_deploy.tensorrt import loader
from ssd_deploy.tensorrt.cuda import Cuda
from ssd_deploy.tensorrt.trtlog import make_logger


def run_all_outputs(
    plan: str | os.PathLike[str], images: np.ndarray, *, device: int = 0
) -> dict[str, np.ndarray]:
    """``{output name: array}`` for one batch ``images [N,3,S,S]`` float32 (one context, one stream)."""
    trt = loader.load_tensorrt()
    cuda = Cuda()
    cuda.set_device(device)
    logger = make_logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
    if engine is None:
        raise BackendError(f"{plan}: TensorRT could not load the plan: {logger.last_error()}")
    context = engine.create_execution_context()
    stream = cuda.stream()
    x = np.ascontiguousarray(images, dtype=np.float32)
    names = [str(engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if len(inputs) != 1 or not context.set_input_shape(inputs[0], x.shape):
        raise BackendError(f"{plan}: cannot set input shape {x.shape}: {logger.last_error()}")
    host, dev, shapes, dtypes = {}, {}, {}, {}
    try:
        for name in names:
            shape = x.shape if name in inputs else tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"{plan}: output {name!r} has a data-dependent shape {shape}")
            dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shapes[name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtypes[name].itemsize
            host[name], dev[name] = cuda.host_buffer(nbytes), cuda.device_buffer(nbytes)
            if not context.set_tensor_address(name, dev[name].ptr):
                raise BackendError(f"{plan}: cannot bind {name!r}: {logger.last_error()}")
        np.copyto(host[inputs[0]].view(np.float32, x.shape), x)
        stream.copy_htod(dev[inputs[0]], host[inputs[0]], x.nbytes)
        if not context.execute_async_v3(stream.ptr):
            raise BackendError(f"{plan}: execution failed: {logger.last_error()}")
        for name in names:
            if name not in inputs:
                stream.copy_dtoh(host[name], dev[name], host[name].nbytes)
        stream.synchronize()
        return {n: host[n].view(dtypes[n], shapes[n]).copy() for n in names if n not in inputs}
    finally:
        for buf in (*host.values(), *dev.values()):
            buf.free()
        stream.destroy()
