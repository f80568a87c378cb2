"""``Detector``: images in, detections in original-image pixels out, on any backend, without torch."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from ..config import DetectParams, SSDConfig
from ..contract import artifact_kind, describe_suffixes
from ..postprocess import Detections, detect_both
from ..postprocess import detect as _detect_normalised
from ..preprocess import is_single_image, preprocess
from ..priors import prior_boxes
from .backend import Backend, BackendError

_log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, bytes, np.ndarray, Any]  # Any: PIL.Image.Image

_UNSET: Any = object()

ONNX_SUFFIXES = (".onnx",)
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
TORCH_SUFFIXES = (".pth", ".pt")


@dataclass(frozen=True)
class ImageDetections:
    """Detections for one image, boxes in that image's pixels ``(x1, y1, x2, y2)``, best first."""

    boxes: np.ndarray  # [K, 4] float32
    scores: np.ndarray  # [K] float32
    class_ids: np.ndarray  # [K] int64, 1..C-1
    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (width, height)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "width": self.image_size[0],
            "height": self.image_size[1],
            "detections": [
                {"class_id": int(c), "class_name": n, "score": round(float(s), 6),
                 "box": [round(float(v), 2) for v in b]}
                for b, s, c, n in zip(self.boxes, self.scores, self.class_ids, self.class_names)
            ],
        }  # fmt: skip

    def above(self, score: float) -> "ImageDetections":
        """Only the detections with a score of at least ``score``."""
        keep = self.scores >= score
        names = tuple(np.asarray(self.class_names, dtype=object)[keep].tolist())
        return ImageDetections(self.boxes[keep], self.scores[keep], self.class_ids[keep], names, self.image_size)


def backend_for(path: str | os.PathLike[str], **options: Any) -> Backend:
    """Open ``path`` with the backend its file type calls for.

    For ``.onnx`` files ``device`` picks the engine (:func:`choose_onnx_backend`): "openvino", an
    ONNX Runtime device ("cpu", "cuda", "tensorrt"), or "auto"/``None``: the fastest one here.
    OpenVINO IR (``.xml``) runs on OpenVINO.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    kind = artifact_kind(p)
    if kind in ("onnx", "openvino"):
        device = options.pop("device", None)
        engine = "openvino" if kind == "openvino" else choose_onnx_backend(device, options.get("precision"))
        if device in (None, "auto") and kind == "onnx":
            _log.info("%s: device=auto runs it on %s", p, engine)
        if engine == "openvino":
            from .openvino import OpenVINOBackend

            return OpenVINOBackend(p, **options)
        if options.get("precision") not in (None, "fp32"):
            raise BackendError(f"precision={options['precision']!r} needs device='openvino' (ONNX Runtime "
                               "runs a graph in the precision it was exported in)")  # fmt: skip
        options.pop("precision", None)
        from .onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(p, device=device, **options)
    if suffix in PLAN_SUFFIXES:
        from .tensorrt.backend import TensorRTBackend

        return TensorRTBackend(p, **options)
    if suffix in TORCH_SUFFIXES:
        from .pytorch import TorchBackend

        return TorchBackend(p, **options)
    raise BackendError(f"{p}: unknown artifact type {suffix or '(no suffix)'!r}; expected {describe_suffixes()}")


def choose_onnx_backend(device: Any = None, precision: str | None = None) -> str:
    """"openvino" or "onnxruntime" for an ``.onnx`` file on ``device``.

    "auto"/``None``: ONNX Runtime where it has CUDA (it then runs on the GPU), else OpenVINO when
    it is installed (the fastest CPU engine, docs/openvino.md), else ONNX Runtime on the CPU. A
    non-FP32 ``precision`` (BF16) exists only on OpenVINO, so it picks OpenVINO.
    """
    if device == "openvino":
        return "openvino"
    if device not in (None, "auto"):
        return "onnxruntime"
    if precision not in (None, "fp32"):
        return "openvino"
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "onnxruntime"
    except ImportError:
        pass
    import importlib.util

    return "openvino" if importlib.util.find_spec("openvino") is not None else "onnxruntime"


def describe_onnx_choice(device: Any = None, precision: str | None = None) -> str:
    """One line saying which engine ``device`` (default "auto") runs an ``.onnx`` file on here, and why."""
    engine = choose_onnx_backend(device, precision)
    if engine == "openvino":
        try:
            from .openvino.backend import cpu_capabilities, import_openvino

            ov = import_openvino()
            core = ov.Core()
            bf16 = "BF16" in cpu_capabilities(core)
            cpu = core.get_property("CPU", "FULL_DEVICE_NAME")
            return (f"OpenVINO {ov.__version__.split('-')[0]} on the CPU ({cpu}): the fastest CPU engine; "
                    f"FP32 exact by default, " + ("--precision bf16 available" if bf16 else "no BF16 on this CPU"))
        except BackendError as e:
            return f"OpenVINO (requested, but: {e})"
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        return "ONNX Runtime (not installed: pip install onnxruntime)"
    if device in (None, "auto") and "CUDAExecutionProvider" in providers:
        return "ONNX Runtime with CUDA (GPU); build a TensorRT .plan with ssd-build for the fastest GPU path"
    hint = "" if device not in (None, "auto") else "; pip install 'ssd_deploy[openvino]' for the faster OpenVINO"
    return f"ONNX Runtime {onnxruntime.__version__} ({device or 'cpu'}){hint}"


class Detector:
    """SSD detection on one backend. Safe to share between threads.

    >>> det = Detector.load("export/ssd300.onnx")          # doctest: +SKIP
    >>> result = det.detect("street.jpg", conf_thresh=0.5)  # doctest: +SKIP
    """

    def __init__(self, backend: Backend, *, params: DetectParams | None = None) -> None:
        self.backend = backend
        self.config: SSDConfig = backend.config
        self.params: DetectParams = params or self.config.detect
        self.params.validate()
        self.priors = prior_boxes(self.config.prior)
        self._names = np.asarray(self.config.class_names, dtype=object)
        self.variances = self.config.variances

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, params: DetectParams | None = None, **backend_options: Any) -> "Detector":
        """Open an ``.onnx``, ``.plan`` or PyTorch checkpoint; the config comes from the file."""
        return cls(backend_for(path, **backend_options), params=params)

    # -- running --------------------------------------------------------------------------------
    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        conf_thresh: float | None = None,
        nms_thresh: float | None = None,
        top_k: int | None = None,
        keep_top_k: int | None = _UNSET,
        return_array: bool = False,
    ) -> Any:
        """Detect objects in one image or a list of images.

        An image is a file path, encoded bytes, a PIL image or an ``H x W x 3`` uint8 array (RGB).
        Returns one :class:`ImageDetections` for a single image, a list for a list. With
        ``return_array=True`` also returns the classic ``[B, C, top_k, 5]`` array (normalised
        boxes) as a second value. Thresholds default to the model's config.
        """
        results, array, _ = self._run(images, conf_thresh, nms_thresh, top_k, keep_top_k, return_array, None)
        return (results, array) if return_array else results

    def detect_timed(self, images: ImageInput | Sequence[ImageInput], **kwargs: Any) -> tuple[Any, dict[str, float]]:
        """:meth:`detect` plus seconds per stage: preprocess, h2d, compute, d2h, postprocess, total."""
        timings: dict[str, float] = {}
        args = [kwargs.pop(k, d) for k, d in
                (("conf_thresh", None), ("nms_thresh", None), ("top_k", None), ("keep_top_k", _UNSET))]
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        results, _, _ = self._run(images, *args, False, timings)
        return results, timings

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw heads for a preprocessed batch ``[N,3,S,S]``: ``(loc [N,P,4], conf [N,P,C])``."""
        return self._infer(batch, None)

    def params_for(
        self, conf_thresh: float | None = None, nms_thresh: float | None = None,
        top_k: int | None = None, keep_top_k: int | None = _UNSET,
    ) -> DetectParams:  # fmt: skip
        changes: dict[str, Any] = {"conf_thresh": conf_thresh, "nms_thresh": nms_thresh, "top_k": top_k}
        if keep_top_k is not _UNSET:
            changes["keep_top_k"] = keep_top_k
        else:
            changes["keep_top_k"] = self.params.keep_top_k
        return self.params.replace(**changes)

    def postprocess(
        self, loc: np.ndarray, conf: np.ndarray, sizes: Sequence[tuple[int, int]], params: DetectParams | None = None
    ) -> list[ImageDetections]:
        """Decode + Detect raw heads, boxes scaled to each ``(width, height)`` in ``sizes``."""
        params = params or self.params
        return self._to_pixels(_detect_normalised(loc, conf, self.priors, self.variances, params), sizes)

    def _to_pixels(self, dets: Sequence[Detections], sizes: Sequence[tuple[int, int]]) -> list[ImageDetections]:
        out = []
        for d, (w, h) in zip(dets, sizes):
            px = d.scaled(w, h)
            labels = px.labels.astype(np.int64, copy=False)
            out.append(ImageDetections(
                boxes=px.boxes, scores=px.scores, class_ids=labels,
                class_names=tuple(self._names[labels].tolist()), image_size=(int(w), int(h)),
            ))  # fmt: skip
        return out

    # -- internals ------------------------------------------------------------------------------
    def _run(
        self, images: Any, conf_thresh: float | None, nms_thresh: float | None, top_k: int | None,
        keep_top_k: Any, return_array: bool, timings: dict[str, float] | None,
    ) -> tuple[Any, np.ndarray | None, dict[str, float] | None]:  # fmt: skip
        params = self.params_for(conf_thresh, nms_thresh, top_k, keep_top_k)
        single = is_single_image(images)
        items = [images] if single else list(images)
        if not items:
            return ([] if not single else None), None, timings
        t0 = time.perf_counter()
        batch, sizes = preprocess(items, self.config)
        t1 = time.perf_counter()
        loc, conf = self._infer(batch, timings)
        t2 = time.perf_counter()
        if return_array:
            dets, array = detect_both(loc, conf, self.priors, self.variances, params)
            results = self._to_pixels(dets, sizes)
        else:
            results, array = self.postprocess(loc, conf, sizes, params), None
        t3 = time.perf_counter()
        if timings is not None:
            timings.update(preprocess=t1 - t0, postprocess=t3 - t2, total=t3 - t0)
            timings.setdefault("compute", t2 - t1)
        return (results[0] if single else results), array, timings

    def _infer(self, batch: np.ndarray, timings: dict[str, float] | None) -> tuple[np.ndarray, np.ndarray]:
        s = self.config.size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise ValueError(f"expected a batch [N,3,{s},{s}], got {batch.shape}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        lo, hi = self.backend.batch_range
        n = batch.shape[0]
        chunk = hi if hi is not None else n
        locs, confs = [], []
        for start in range(0, n, max(chunk, 1)):
            part = batch[start:start + chunk]
            m = part.shape[0]
            if m < lo:  # static-batch artifacts: pad with zeros, drop the padding afterwards
                part = np.concatenate([part, np.zeros((lo - m,) + part.shape[1:], np.float32)])
            if timings is None:
                loc, conf = self.backend.run(part)
            else:
                loc, conf, st = self.backend.run_timed(part)
                for key, val in (("h2d", st.h2d), ("compute", st.compute), ("d2h", st.d2h)):
                    timings[key] = timings.get(key, 0.0) + val
            locs.append(loc[:m])
            confs.append(conf[:m])
        if len(locs) == 1:
            return locs[0], confs[0]
        return np.concatenate(locs), np.concatenate(confs)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Detector({self.config.name}, backend={self.backend.name}, precision={self.backend.precision}, "
                f"path={self.backend.path!r})")

