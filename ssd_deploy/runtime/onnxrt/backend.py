"""Run an exported SSD ``.onnx`` file with ONNX Runtime."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...config import ConfigError, SSDConfig
from ...contract import CONF, DETECTIONS, INPUT, LOC, NUM_DETECTIONS, PRECISION_KEY, PRIORS
from ...priors import prior_boxes
from ..backend import Backend, BackendError

_PROVIDER_ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
        ) from None
    return onnxruntime


def resolve_providers(device: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Execution providers for ``device``: ``None``/"auto" (CUDA when this onnxruntime has it,
    else CPU), "cpu", "cuda", "tensorrt" (TensorRT EP; it compiles engines when the session opens),
    or an explicit provider list."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device is None or device == "auto":
        wanted = _PROVIDER_ALIASES["cuda"]
        return [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    wanted = (
        list(_PROVIDER_ALIASES[device])
        if isinstance(device, str) and device in _PROVIDER_ALIASES
        else ([device] if isinstance(device, str) else list(device))
    )
    missing = [p for p in wanted if p not in available and p != "CPUExecutionProvider"]
    if missing:
        raise BackendError(
            f"ONNX Runtime execution provider(s) {', '.join(missing)} not available here "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use device='cpu'"
        )
    return wanted


class OnnxRuntimeBackend(Backend):
    """An ``InferenceSession`` over an ssd_deploy ONNX file. ``run`` is thread-safe (ORT's is)."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str | Sequence[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        ort = _import_ort()
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise BackendError(f"{p}: no such file")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        providers = resolve_providers(device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(p), sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendError(f"{p}: ONNX Runtime cannot load it: {first}") from None
        meta = self._session.get_modelmeta().custom_metadata_map
        try:
            self.config: SSDConfig = SSDConfig.from_metadata(meta, str(p))
        except ConfigError as e:
            raise BackendError(str(e)) from None
        self.precision = meta.get(PRECISION_KEY, "fp32")
        self.metadata: dict[str, str] = dict(meta)
        self._check_io(p)
        self._providers = self._session.get_providers()
        self._priors_checked = False

    def _check_io(self, p: Path) -> None:
        ins = {i.name: i for i in self._session.get_inputs()}
        outs = {o.name: o for o in self._session.get_outputs()}
        if INPUT not in ins or not {LOC, CONF} <= outs.keys():
            raise BackendError(
                f"{p}: expected input '{INPUT}' and outputs '{LOC}', '{CONF}'; found inputs {sorted(ins)} "
                f"outputs {sorted(outs)}"
            )
        shape = ins[INPUT].shape
        s = self.config.size
        if len(shape) != 4 or list(shape[1:]) != [3, s, s]:
            raise BackendError(f"{p}: input '{INPUT}' has shape {shape}, the config says [N,3,{s},{s}]")
        n = shape[0]
        self._batch_range: tuple[int, int | None] = (n, n) if isinstance(n, int) else (1, None)
        self._has_priors = PRIORS in outs
        self._read_end_to_end(outs)  # end-to-end artifacts: Detect also runs in the graph

    @property
    def session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession`` (for benchmarks and advanced use)."""
        return self._session

    @property
    def batch_range(self) -> tuple[int, int | None]:
        return self._batch_range

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self._priors_checked and self._has_priors:
            # The first call also fetches the file's priors and checks them against the config,
            # so a file whose graph and metadata disagree is caught rather than decoded wrongly.
            loc, conf, priors = self._session.run([LOC, CONF, PRIORS], {INPUT: images})
            expected = prior_boxes(self.config.prior)
            if priors.shape != expected.shape or not np.allclose(priors, expected, atol=1e-5):
                raise BackendError(f"{self.path}: the priors in the graph do not match its metadata config")
            self._priors_checked = True
            return loc, conf
        loc, conf = self._session.run([LOC, CONF], {INPUT: images})
        return loc, conf

    def run_detections(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-to-end artifacts only: ``(detections [N, D, 6], num_detections [N])`` from the graph."""
        if self.end_to_end is None:
            raise BackendError(f"{self.path}: not an end-to-end artifact (no {DETECTIONS} output)")
        dets, num = self._session.run([DETECTIONS, NUM_DETECTIONS], {INPUT: images})
        return dets, num

    def describe(self) -> dict[str, object]:
        import onnxruntime as ort

        return {
            "backend": self.name, "path": self.path, "precision": self.precision,
            "providers": self._providers, "onnxruntime": ort.__version__,
        }  # fmt: skip
