"""ONNX Runtime backend (CPU by default; CUDA / TensorRT execution providers on request)."""

from .backend import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend"]
