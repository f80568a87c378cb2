"""TensorRT: plan builder, plan manifest and the ``.plan`` backend.

Importing this package imports neither TensorRT nor CUDA; they load when a plan is built or
opened, and a missing library or GPU is reported in one line (:class:`TensorRTUnavailable`).
"""

from ._import import TensorRTUnavailable
from .manifest import ManifestError, PlanManifest, manifest_path, read_manifest

__all__ = [
    "TensorRTUnavailable",
    "ManifestError",
    "PlanManifest",
    "manifest_path",
    "read_manifest",
    "TensorRTBackend",
]


def __getattr__(name: str):  # keep `import ssd_deploy.runtime.tensorrt` cheap
    if name == "TensorRTBackend":
        from .backend import TensorRTBackend

        return TensorRTBackend
    raise AttributeError(name)
