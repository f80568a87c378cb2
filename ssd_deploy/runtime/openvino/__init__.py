"""OpenVINO backend: the fast CPU path for ``.onnx`` files (FP32, opt-in BF16, INT8 Q/DQ) and ``.xml`` IR."""

from .backend import OpenVINOBackend, cpu_capabilities, default_cache_dir, save_ir

__all__ = ["OpenVINOBackend", "cpu_capabilities", "default_cache_dir", "save_ir"]
