"""What every backend (ONNX Runtime, TensorRT, PyTorch reference) provides to :class:`Detector`."""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import SSDConfig
from ..contract import DETECTIONS, NUM_DETECTIONS, RECIPE_KEY
from ..errors import InputError, SSDDeployError


class BackendError(SSDDeployError, RuntimeError):
    """A backend cannot load or run an artifact; the message is one line naming the file."""


@dataclass
class StageTimes:
    """Seconds spent per stage of one ``run`` call; stages a backend cannot separate stay 0."""

    h2d: float = 0.0
    compute: float = 0.0
    d2h: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Backend(abc.ABC):
    """Runs the SSD network: preprocessed ``images [N,3,S,S] float32`` -> ``(loc, conf)``.

    ``loc`` is ``[N,P,4]`` float32 (encoded offsets) and ``conf`` is ``[N,P,C]`` float32 softmax
    scores. Decode and Detect are not a backend's job: :mod:`ssd_deploy.postprocess` does them
    for every backend. ``run`` must be safe to call from several threads at once.
    """

    #: Artifact this backend was loaded from.
    path: str
    #: Config read from the artifact's metadata.
    config: SSDConfig
    #: "fp32", "fp16", "int8", or "mixed" - what the artifact says about itself.
    precision: str = "fp32"
    #: Short backend name for reports ("onnxruntime", "tensorrt", "torch").
    name: str = "backend"

    #: Detect baked into an end-to-end graph (:class:`ssd_deploy.endtoend.EndToEndSpec`), else None.
    end_to_end: Any = None

    @property
    def recipe(self) -> dict[str, Any]:
        """How the artifact's precision was produced (its recipe metadata), or ``{}``."""
        meta = getattr(self, "metadata", None) or {}
        try:
            return dict(json.loads(meta.get(RECIPE_KEY, "{}")))
        except (json.JSONDecodeError, TypeError, ValueError):
            return {}

    def _read_end_to_end(self, output_names: Iterable[str]) -> bool:
        """Set :attr:`end_to_end` from the metadata when the graph has the end-to-end outputs
        (docs/end_to_end.md); returns whether it has them."""
        if not {DETECTIONS, NUM_DETECTIONS} <= set(output_names):
            return False
        from .in_graph import read_end_to_end

        try:
            self.end_to_end = read_end_to_end(getattr(self, "metadata", None) or {}, self.path)
        except InputError as e:
            raise BackendError(str(e)) from None
        return True

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """Smallest and largest batch the artifact accepts (``None``: unbounded)."""
        return (1, None)

    @abc.abstractmethod
    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on a preprocessed batch; returns ``(loc, conf)``."""

    def run_timed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, StageTimes]:
        """Like :meth:`run`, with per-stage times (backends that can split stages override this)."""
        import time

        t0 = time.perf_counter()
        loc, conf = self.run(images)
        return loc, conf, StageTimes(compute=time.perf_counter() - t0)

    def describe(self) -> dict[str, object]:
        """Facts for benchmark headers and reports."""
        return {"backend": self.name, "path": self.path, "precision": self.precision}

    def close(self) -> None:  # noqa: B027 - optional hook: a no-op unless the backend holds resources
        """Release resources (idempotent)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
