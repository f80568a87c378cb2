"""TensorRT build side and what the runner shares with it: the lazy loader of TensorRT and the CUDA
bindings, CUDA helpers, the plan manifest, the logger, and the plan builder (:mod:`.builder`).

Importing this package imports neither TensorRT nor CUDA; a missing library or GPU is reported in
one line (:class:`TensorRTUnavailable`) when a plan is built or opened.
"""

from .loader import TensorRTUnavailable
from .manifest import ManifestError, PlanManifest, manifest_path, read_manifest

__all__ = ["TensorRTUnavailable", "ManifestError", "PlanManifest", "manifest_path", "read_manifest"]
