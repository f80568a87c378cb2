"""``Detector``: images in, detections in original-image pixels out, on any backend, without torch."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from ..config import DetectParams, SSDConfig
from ..postprocess import Detections, detect_both
from ..postprocess import detect as _detect_normalised
from ..preprocess import is_single_image, preprocess
from ..priors import prior_boxes
from .backend import Backend, BackendError
from .in_graph import in_graph_kept, in_graph_mismatch, kept_as_array, kept_as_list

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
    """Open ``path`` with the backend its file type calls for."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from .onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(p, **options)
    if suffix in PLAN_SUFFIXES:
        from .tensorrt.backend import TensorRTBackend

        return TensorRTBackend(p, **options)
    if suffix in TORCH_SUFFIXES:
        from .pytorch import TorchBackend

        return TorchBackend(p, **options)
    raise BackendError(
        f"{p}: unknown artifact type {suffix or '(no suffix)'!r}; expected .onnx (ONNX Runtime), "
        ".plan/.engine (TensorRT) or .pth/.pt (PyTorch checkpoint)"
    )


class Detector:
    """SSD detection on one backend. Safe to share between threads.

    >>> det = Detector.load("export/ssd300.onnx")          # doctest: +SKIP
    >>> result = det.detect("street.jpg", conf_thresh=0.5)  # doctest: +SKIP
    """

    def __init__(self, backend: Backend, *, params: DetectParams | None = None) -> None:
        self.backend = backend
        self.config: SSDConfig = backend.config
        #: Baked Detect of an end-to-end artifact (docs/end_to_end.md), else ``None``; its
        #: parameters are the default there, so that the graph's detections are used.
        self.end_to_end = getattr(backend, "end_to_end", None)
        baked = self.end_to_end.params if self.end_to_end is not None else None
        self.params: DetectParams = params or baked or self.config.detect
        self.params.validate()
        self.priors = prior_boxes(self.config.prior)
        self._names = np.asarray(self.config.class_names, dtype=object)
        self.variances = self.config.variances
        self._warned_fallback = False

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
        if self.in_graph(params):
            dets_rows, counts = self._infer_in_graph(batch, timings)
            t2 = time.perf_counter()
            kept = in_graph_kept(dets_rows, counts, params, self.end_to_end)
            results = self._to_pixels(kept_as_list(kept, len(items)), sizes)
            array = None
            if return_array:
                array = kept_as_array(kept, len(items), self.config.num_classes, params.top_k)
            t3 = time.perf_counter()
            if timings is not None:
                # Decode + NMS ran in the engine: "postprocess" is only the unpacking left here.
                timings.update(preprocess=t1 - t0, postprocess=t3 - t2, total=t3 - t0)
                timings.setdefault("compute", t2 - t1)
            return (results[0] if single else results), array, timings
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

    def in_graph(self, params: DetectParams | None = None) -> bool:
        """Whether Detect with ``params`` (default: the detector's) is read from the graph's own
        ``detections``: only for end-to-end artifacts whose baked parameters cover the request.
        Looser requests fall back to the numpy Detect on ``loc``/``conf`` (with a warning, once)."""
        if self.end_to_end is None:
            return False
        params = params or self.params
        why = in_graph_mismatch(self.end_to_end, params, self.config.num_priors)
        if why and not self._warned_fallback:
            self._warned_fallback = True
            warnings.warn(
                f"{self.backend.path}: {why}; running the numpy Detect on loc/conf instead of the "
                "graph's detections (warned once)", RuntimeWarning, stacklevel=4,
            )  # fmt: skip
        return why is None

    def _infer_in_graph(
        self, batch: np.ndarray, timings: dict[str, float] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(detections, num_detections)`` for a preprocessed batch, chunked/padded like :meth:`_infer`."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        lo, hi = self.backend.batch_range
        n = batch.shape[0]
        chunk = max(hi if hi is not None else n, 1)
        rows, nums = [], []
        for start in range(0, n, chunk):
            part = batch[start:start + chunk]
            m = part.shape[0]
            if m < lo:
                part = np.concatenate([part, np.zeros((lo - m,) + part.shape[1:], np.float32)])
            t0 = time.perf_counter()
            dets, num = self.backend.run_detections(part)  # type: ignore[attr-defined]
            if timings is not None:
                timings["compute"] = timings.get("compute", 0.0) + time.perf_counter() - t0
            rows.append(dets[:m])
            nums.append(num[:m])
        return np.concatenate(rows), np.concatenate(nums)

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

