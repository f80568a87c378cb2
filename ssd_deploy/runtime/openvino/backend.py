"""Run an exported SSD ``.onnx`` file (or an OpenVINO IR ``.xml``) with OpenVINO on the CPU.

One compiled model per backend and a pool of infer requests: each ``run`` borrows a request, so
threads run concurrently without sharing one, and a request is reused rather than created per
call. The model is compiled from its file path with OpenVINO's model cache (``CACHE_DIR``) so
the second load of the same file reads the compiled blob instead of compiling again.

Precision is explicit (docs/openvino.md, "Precision stays explicit"): OpenVINO's CPU plugin runs
FP32 graphs in BF16 by default on CPUs that have BF16, so the backend always sets the precision hint:
``f32`` unless ``precision="bf16"`` asks for BF16. Q/DQ (INT8) graphs run their quantized
convolutions as INT8 kernels under either hint.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...config import PRECISION_KEY, ConfigError, SSDConfig
from ...contract import CONF, CONFIG_KEY, DETECTIONS, INPUT, LOC, NUM_DETECTIONS, PRIORS, artifact_kind
from ...errors import MissingDependency, one_line, optional_import
from ...priors import prior_boxes
from ..backend import Backend, BackendError
from .onnx_meta import OnnxMetaError, read_onnx_metadata

_log = logging.getLogger(__name__)

#: Environment variable that moves the compiled-model cache; an empty value turns the cache off.
CACHE_ENV = "SSD_DEPLOY_OPENVINO_CACHE"
#: Precisions a caller may ask for: ``None``/"fp32" = exact, "bf16" = BF16 inference hint.
PRECISIONS = ("fp32", "bf16")
_HINTS = {"fp32": "f32", "bf16": "bf16"}
#: The OpenVINO device this backend compiles for (GPU/NPU plugins are not what this backend is for).
DEVICE = "CPU"


def import_openvino() -> Any:
    """The ``openvino`` module, or a one-line :class:`BackendError` saying what to install or pick."""
    try:
        return optional_import("openvino", extra="openvino", purpose="device='openvino'")
    except MissingDependency as e:
        raise BackendError(f"{e}, or choose device='cpu' (ONNX Runtime)") from None


def default_cache_dir() -> str | None:
    """Where compiled models are cached: ``$SSD_DEPLOY_OPENVINO_CACHE`` (empty: no cache), else
    ``$XDG_CACHE_HOME/ssd_deploy/openvino`` (``~/.cache/ssd_deploy/openvino``)."""
    if CACHE_ENV in os.environ:
        return os.environ[CACHE_ENV] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ssd_deploy", "openvino")


def cpu_capabilities(core: Any) -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (e.g. ``["BF16", "FP32", "INT8", ...]``)."""
    return [str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")]


def check_precision(precision: str | None, capabilities: list[str]) -> str:
    """Normalise ``precision`` (``None`` -> "fp32") and refuse what this CPU cannot run."""
    p = "fp32" if precision in (None, "", "fp32", "f32") else str(precision).lower()
    if p not in PRECISIONS:
        raise BackendError(f"precision={precision!r} is not an OpenVINO precision; choose one of "
                           f"{', '.join(PRECISIONS)}")  # fmt: skip
    if p == "bf16" and "BF16" not in capabilities:
        raise BackendError(
            "precision='bf16': this CPU has no BF16 support according to OpenVINO (needs AVX512-BF16 or "
            "AMX); run without --precision (FP32) or an INT8 model instead"
        )
    return p


def preflight(precision: str | None = None) -> str:
    """Check before expensive work (starting Ray, loading replicas) that OpenVINO is installed and
    this CPU runs ``precision``; returns the normalised precision or raises :class:`BackendError`."""
    ov = import_openvino()
    return check_precision(precision, cpu_capabilities(ov.Core()))


def _read_metadata(core: Any, p: Path) -> dict[str, str]:
    """ssd_deploy metadata: ``metadata_props`` of an ONNX file, the IR's ``framework`` rt_info else."""
    if artifact_kind(p) == "onnx":
        try:
            return read_onnx_metadata(p)
        except (OnnxMetaError, OSError) as e:
            raise BackendError(f"{p}: not a readable ONNX file: {e}") from None
    try:
        model = core.read_model(str(p))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long text
        raise BackendError(f"{p}: OpenVINO cannot read it: {one_line(e)}") from None
    if not model.has_rt_info(["framework"]):
        return {}
    info = model.get_rt_info(["framework"]).astype(dict)
    return {str(k): v.astype(str) for k, v in info.items()}


class OpenVINOBackend(Backend):
    """A compiled OpenVINO model over an ssd_deploy ``.onnx`` or ``.xml``. ``run`` is thread-safe."""

    name = "openvino"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        precision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        intra_op_threads: int | None = None,
        performance_hint: str = "LATENCY",
        core: Any = None,
    ) -> None:
        ov = import_openvino()
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise BackendError(f"{p}: no such file")
        if artifact_kind(p) not in ("onnx", "openvino"):
            raise BackendError(f"{p}: OpenVINO runs .onnx or OpenVINO IR .xml files")
        self._core = core if core is not None else ov.Core()
        self.capabilities = cpu_capabilities(self._core)
        requested = check_precision(precision, self.capabilities)
        meta = _read_metadata(self._core, p)
        try:
            self.config: SSDConfig = SSDConfig.from_metadata(meta, str(p))
        except ConfigError as e:
            raise BackendError(str(e)) from None
        self.metadata: dict[str, str] = dict(meta)
        #: What the artifact says about itself ("fp32", "fp16", "int8", "mixed").
        self.artifact_precision = meta.get(PRECISION_KEY, "fp32")
        # The precision results are held to (ssd-check limits): a BF16 hint on an FP32/FP16 graph
        # makes it a BF16 run; an INT8 graph stays INT8 (its float parts then run in BF16 too).
        self.precision = (
            "bf16" if requested == "bf16" and self.artifact_precision != "int8" else self.artifact_precision
        )
        self.inference_precision = requested
        self.cache_dir = str(cache_dir) if cache_dir is not None else default_cache_dir()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[requested],
            "PERFORMANCE_HINT": str(performance_hint).upper(),
        }
        if self.cache_dir:
            try:
                os.makedirs(self.cache_dir, exist_ok=True)
                config["CACHE_DIR"] = self.cache_dir
            except OSError as e:  # a read-only home must not stop inference: compile without a cache
                _log.warning(
                    "OpenVINO model cache %s unusable (%s); compiling without it (set %s)",
                    self.cache_dir,
                    e.strerror or e,
                    CACHE_ENV,
                )
                self.cache_dir = None
        if intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = int(intra_op_threads)
        try:
            self._compiled = self._core.compile_model(str(p), DEVICE, config)
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"{p}: OpenVINO cannot compile it: {one_line(e)}") from None
        self._check_io(p)
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._requests = 0
        self._priors_checked = not self._has_priors
        self._closed = False

    def _check_io(self, p: Path) -> None:
        ins = {n: i for i in self._compiled.inputs for n in i.get_names()}
        outs = {n: o for o in self._compiled.outputs for n in o.get_names()}
        if INPUT not in ins or not {LOC, CONF} <= outs.keys():
            raise BackendError(
                f"{p}: expected input '{INPUT}' and outputs '{LOC}', '{CONF}'; found inputs {sorted(ins)} "
                f"outputs {sorted(outs)}"
            )
        shape = ins[INPUT].get_partial_shape()
        s = self.config.size
        dims = [d.get_length() if d.is_static else None for d in shape]
        if len(dims) != 4 or dims[1:] != [3, s, s]:
            raise BackendError(f"{p}: input '{INPUT}' has shape {shape}, the config says [N,3,{s},{s}]")
        n = dims[0]
        self._batch_range: tuple[int, int | None] = (n, n) if n is not None else (1, None)
        self._has_priors = PRIORS in outs
        self._outputs = (outs[LOC], outs[CONF])
        self._priors_output = outs.get(PRIORS)
        if self._read_end_to_end(outs):  # end-to-end artifacts: Detect also runs in the graph
            self._detection_outputs = (outs[DETECTIONS], outs[NUM_DETECTIONS])

    @property
    def compiled_model(self) -> Any:
        """The ``openvino.CompiledModel`` (for benchmarks and advanced use)."""
        return self._compiled

    @property
    def batch_range(self) -> tuple[int, int | None]:
        return self._batch_range

    def _borrow(self) -> Any:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            if self._closed:
                raise BackendError(f"{self.path}: the OpenVINO backend is closed") from None
            with self._lock:
                self._requests += 1
            return self._compiled.create_infer_request()

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        req = self._borrow()
        try:
            # share_inputs: the request reads the caller's array in place instead of copying it;
            # share_outputs: no copy of every output into the returned dict (priors included).
            req.infer({INPUT: images}, share_inputs=True, share_outputs=True)
            # Copies: the request's output tensors are overwritten by its next call.
            loc = np.array(req.get_tensor(self._outputs[0]).data, dtype=np.float32)
            conf = np.array(req.get_tensor(self._outputs[1]).data, dtype=np.float32)
            if not self._priors_checked:
                self._check_priors(np.array(req.get_tensor(self._priors_output).data))
        finally:
            self._pool.put(req)
        return loc, conf

    def run_detections(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-to-end artifacts only: ``(detections [N, D, 6], num_detections [N])`` from the graph.

        OpenVINO's ties and IoU-equal-to-threshold differ from the numpy Detect in corners
        (docs/end_to_end.md, "Documented differences")."""
        if self.end_to_end is None:
            raise BackendError(f"{self.path}: not an end-to-end artifact (no {DETECTIONS} output)")
        req = self._borrow()
        try:
            req.infer({INPUT: images}, share_inputs=True, share_outputs=True)
            dets = np.array(req.get_tensor(self._detection_outputs[0]).data, dtype=np.float32)
            num = np.array(req.get_tensor(self._detection_outputs[1]).data)
        finally:
            self._pool.put(req)
        return dets, num

    def _check_priors(self, priors: np.ndarray) -> None:
        # The first call checks the graph's priors against the metadata config, so a file whose
        # graph and metadata disagree is caught rather than decoded wrongly (as for ONNX Runtime).
        expected = prior_boxes(self.config.prior)
        if priors.shape != expected.shape or not np.allclose(priors, expected, atol=1e-5):
            raise BackendError(f"{self.path}: the priors in the graph do not match its metadata config")
        self._priors_checked = True

    @property
    def requests_created(self) -> int:
        """How many infer requests the pool holds (one per concurrently running caller, at most)."""
        return self._requests

    def describe(self) -> dict[str, object]:
        ov = import_openvino()
        return {
            "backend": self.name, "path": self.path, "precision": self.precision,
            "artifact_precision": self.artifact_precision,
            "inference_precision": self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "device": f"{DEVICE} ({self._core.get_property(DEVICE, 'FULL_DEVICE_NAME')})",
            "openvino": ov.__version__.split("-")[0], "cache_dir": self.cache_dir,
        }  # fmt: skip

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                return


def save_ir(onnx_path: str | os.PathLike[str], xml_path: str | os.PathLike[str]) -> Path:
    """Convert an ssd_deploy ``.onnx`` to OpenVINO IR (``xml_path`` + its ``.bin``), weights as they are.

    The ssd_deploy metadata travels in the IR's ``framework`` rt_info, where the backend reads it.
    Weights are not compressed to FP16 (OpenVINO's ``save_model`` default), so an FP32 file stays
    FP32. Both files are written in a temporary folder beside ``xml_path`` and moved into place,
    the ``.bin`` first, so a reader never finds an ``.xml`` without its weights.
    """
    import tempfile

    ov = import_openvino()
    src, dst = Path(onnx_path), Path(xml_path)
    if artifact_kind(src) != "onnx" or not src.is_file():
        raise BackendError(f"{src}: expected an existing .onnx file")
    if artifact_kind(dst) != "openvino":
        raise BackendError(f"{dst}: an OpenVINO IR path must end in .xml")
    if CONFIG_KEY not in _read_metadata(None, src):
        raise BackendError(
            f"{src}: no {CONFIG_KEY!r} in its metadata; export it with python -m ssd_deploy.export"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.stem}.", dir=dst.parent) as tmp:
        tmp_xml = Path(tmp) / dst.name
        try:
            ov.save_model(ov.Core().read_model(str(src)), str(tmp_xml), compress_to_fp16=False)
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"{src}: OpenVINO cannot convert it: {one_line(e)}") from None
        os.replace(tmp_xml.with_suffix(".bin"), dst.with_suffix(".bin"))
        os.replace(tmp_xml, dst)
    return dst
