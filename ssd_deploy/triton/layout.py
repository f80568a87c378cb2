"""What an ssd_deploy Triton repository holds: file names, tensor names, backends, its error type."""

from __future__ import annotations

from pathlib import Path

from ..errors import SSDDeployError

TEMPLATE = Path(__file__).with_name("python_model.py")
CONFIG_FILE = "ssd_config.json"
IMAGE_INPUT = "IMAGE"
OUTPUTS = (("boxes", "TYPE_FP32", [-1, 4]), ("scores", "TYPE_FP32", [-1]),
           ("class_ids", "TYPE_INT32", [-1]), ("num_detections", "TYPE_INT32", [1]))  # fmt: skip
MODEL_FILES = {
    "tensorrt_plan": "model.plan",
    "onnxruntime_onnx": "model.onnx",
    "python": "model.py",
    "openvino": "model.onnx",
}
#: Engines an .onnx file can run on in Triton: its ONNX Runtime platform or its OpenVINO backend.
ONNX_BACKENDS = ("onnxruntime", "openvino")


class TritonError(SSDDeployError, RuntimeError):
    """The repository cannot be written or does not check out; one line naming the file."""
