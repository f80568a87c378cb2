"""ssd_deploy: SSD (VGG16) from PyTorch to ONNX, FP16/INT8 and TensorRT, with a torch-free runtime."""

from .config import SSDConfig, make_config, preset

__version__ = "0.3.0"
__all__ = ["SSDConfig", "preset", "make_config", "__version__"]
