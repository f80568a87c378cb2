"""The torch-free runtime: :class:`Detector` over ONNX Runtime, TensorRT or the PyTorch reference."""

from .backend import Backend, BackendError, StageTimes
from .detector import Detector, ImageDetections, backend_for

__all__ = ["Backend", "BackendError", "StageTimes", "Detector", "ImageDetections", "backend_for"]
