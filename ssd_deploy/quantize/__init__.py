"""FP16 and INT8 ONNX for strongly typed TensorRT, built and checked on the CPU.

``python -m ssd_deploy.quantize --onnx export/ssd300.onnx --precision fp16|int8 --calib-images DIR``
(see :mod:`.__main__`). Needs ``onnx`` (``pip install 'ssd_deploy[precision]'``) and ONNX Runtime.
"""

from __future__ import annotations

try:
    import onnx  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ssd_deploy.quantize needs the onnx package: pip install 'ssd_deploy[precision]'"
    ) from e

from .calibration import (
    Calibration,
    CalibrationError,
    CalibrationImages,
    gather_images,
    images_from_folder,
    sample_calibration_images,
)
from .fp16 import DEFAULT_MARGIN, FP16_MAX, Fp16Plan, convert_fp16, naive_fp16_nodes, plan_fp16
from .graph import GraphError, GraphIndex, find_heads, find_l2norm, select_nodes
from .int8 import TARGETS, Int8Plan, TensorRange, build_int8, plan_int8, quantize_weights
from .pipeline import (
    DEFAULT_METHOD,
    QuantizeError,
    QuantizeResult,
    default_output,
    quantize_fp16,
    quantize_int8,
    write_report,
)
from .ranges import METHODS, TensorStats, collect_stats, compute_amax

__all__ = [
    "Calibration",
    "CalibrationError",
    "CalibrationImages",
    "gather_images",
    "images_from_folder",
    "sample_calibration_images",
    "DEFAULT_MARGIN",
    "FP16_MAX",
    "Fp16Plan",
    "convert_fp16",
    "naive_fp16_nodes",
    "plan_fp16",
    "GraphError",
    "GraphIndex",
    "find_heads",
    "find_l2norm",
    "select_nodes",
    "TARGETS",
    "Int8Plan",
    "TensorRange",
    "build_int8",
    "plan_int8",
    "quantize_weights",
    "DEFAULT_METHOD",
    "QuantizeError",
    "QuantizeResult",
    "default_output",
    "quantize_fp16",
    "quantize_int8",
    "write_report",
    "METHODS",
    "TensorStats",
    "collect_stats",
    "compute_amax",
]
