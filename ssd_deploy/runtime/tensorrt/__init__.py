"""The TensorRT ``.plan`` runner. Building plans is :mod:`ssd_deploy.tensorrt` (never imported here
except for the shared loader, CUDA helpers and manifest reader).

Importing this package imports neither TensorRT nor CUDA; they load when a plan is opened.
"""

__all__ = ["TensorRTBackend"]


def __getattr__(name: str):  # keep `import ssd_deploy.runtime.tensorrt` cheap
    if name == "TensorRTBackend":
        from .backend import TensorRTBackend

        return TensorRTBackend
    raise AttributeError(name)
