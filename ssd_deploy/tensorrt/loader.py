"""Lazy imports of TensorRT and the CUDA runtime bindings, each failing with one line.

Nothing here constructs a TensorRT object: importing the Python module is safe on a machine
without a GPU, creating a ``Builder`` or ``Runtime`` there is not (docs/tensorrt.md). Every caller
goes through these functions (looked up on the module at call time) so tests can swap in fakes.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from ..errors import one_line
from ..runtime.backend import BackendError

#: What to install, for messages.
INSTALL_HINT = "pip install 'ssd_deploy[tensorrt]' on a machine with an NVIDIA GPU"


class TensorRTUnavailable(BackendError):
    """TensorRT, the CUDA bindings or a GPU is missing; the message is one line."""


def load_tensorrt() -> ModuleType:
    """The TensorRT Python module: ``tensorrt`` (full install) or ``tensorrt_bindings`` (bindings only).

    The ``tensorrt-cu13`` wheel provides ``tensorrt``, which re-exports ``tensorrt_bindings``;
    a bindings-only install imports only where ``libnvinfer.so.11`` can be loaded.
    """
    errors: list[str] = []
    for name in ("tensorrt", "tensorrt_bindings"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the package is there but something it needs is not
                errors.append(f"{name}: {one_line(e)}")
        except (ImportError, OSError) as e:
            errors.append(f"{name}: {one_line(e)}")
        else:
            if hasattr(mod, "Runtime") and hasattr(mod, "__version__"):
                return mod
            if getattr(mod, "__file__", None) is None:
                # A folder named tensorrt/ on sys.path (a tests folder, say) imports as an empty
                # namespace package: that is "not installed", not an error worth reporting.
                sys.modules.pop(name, None)
            else:
                errors.append(f"{name}: {mod.__file__} is not the TensorRT package")
    detail = "; ".join(errors) if errors else "no module named tensorrt"
    raise TensorRTUnavailable(f"TensorRT is not available ({detail}); {INSTALL_HINT}")


def load_cudart() -> ModuleType:
    """The CUDA runtime bindings of cuda-python: ``cuda.bindings.runtime`` (12.6+), else ``cuda.cudart``."""
    errors: list[str] = []
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and not name.startswith(e.name):
                errors.append(f"{name}: {one_line(e)}")
        except (ImportError, OSError) as e:
            errors.append(f"{name}: {one_line(e)}")
    detail = "; ".join(errors) if errors else "no module named cuda.bindings"
    raise TensorRTUnavailable(f"cuda-python is not available ({detail}); {INSTALL_HINT}")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"11.4.0.106"`` -> ``(11, 4, 0, 106)``; non-numeric parts end the tuple."""
    out: list[int] = []
    for part in version.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)
