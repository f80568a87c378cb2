"""``Detector``: images in, detections in original-image pixels out, on any backend, without torch."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, overload

import numpy as np

if TYPE_CHECKING:
    import PIL.Image

from ..config import DetectParams, SSDConfig
from ..contract import artifact_kind, describe_suffixes
from ..ops import jit
from ..postprocess import Detections, detect_both
from ..postprocess import detect as _detect_normalised
from ..preprocess import image_list, is_single_image, preprocess
from ..priors import prior_boxes
from .backend import Backend, BackendError
from .in_graph import in_graph_kept, in_graph_mismatch, kept_as_array, kept_as_list

_log = logging.getLogger(__name__)

#: One image: a path, encoded bytes, a PIL image or an ``H x W x 3`` uint8 RGB array.
SingleImage = Union[str, os.PathLike, bytes, np.ndarray, "PIL.Image.Image"]  # noqa: F821
ImageInput = SingleImage  # the older name

_UNSET: Any = object()


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

    def above(self, score: float) -> ImageDetections:
        """Only the detections with a score of at least ``score``."""
        keep = self.scores >= score
        names = tuple(np.asarray(self.class_names, dtype=object)[keep].tolist())
        return ImageDetections(
            self.boxes[keep], self.scores[keep], self.class_ids[keep], names, self.image_size
        )


def backend_for(path: str | os.PathLike[str], **options: Any) -> Backend:
    """Open ``path`` with the backend its file type calls for.

    For ``.onnx`` files ``device`` picks the engine (:func:`choose_onnx_backend`): "openvino", an
    ONNX Runtime device ("cpu", "cuda", "tensorrt"), or "auto"/``None``: the fastest one here.
    OpenVINO IR (``.xml``) runs on OpenVINO.
    """
    p = Path(path)
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
    if kind == "plan":
        from .tensorrt.backend import TensorRTBackend

        return TensorRTBackend(p, **options)
    if kind == "torch":
        from .pytorch import TorchBackend

        return TorchBackend(p, **options)
    raise BackendError(
        f"{p}: unknown artifact type {p.suffix or '(no suffix)'!r}; expected {describe_suffixes()}"
    )


def choose_onnx_backend(device: Any = None, precision: str | None = None) -> str:
    """ "openvino" or "onnxruntime" for an ``.onnx`` file on ``device``.

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
            return (
                f"OpenVINO {ov.__version__.split('-')[0]} on the CPU ({cpu}): the fastest CPU engine; "
                f"FP32 exact by default, " + ("--precision bf16 available" if bf16 else "no BF16 on this CPU")
            )
        except BackendError as e:
            return f"OpenVINO (requested, but: {e})"
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        return "ONNX Runtime (not installed: pip install onnxruntime)"
    if device in (None, "auto") and "CUDAExecutionProvider" in providers:
        return "ONNX Runtime with CUDA (GPU); build a TensorRT .plan with ssd-build for the fastest GPU path"
    hint = (
        "" if device not in (None, "auto") else "; pip install 'ssd_deploy[openvino]' for the faster OpenVINO"
    )
    return f"ONNX Runtime {onnxruntime.__version__} ({device or 'cpu'}){hint}"


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
        # Compile (first time on a machine) or load the numba kernels now, not on the first image.
        jit.warm_up()

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, params: DetectParams | None = None, **backend_options: Any
    ) -> Detector:
        """Open an ``.onnx``, ``.plan`` or PyTorch checkpoint; the config comes from the file."""
        return cls(backend_for(path, **backend_options), params=params)

    @property
    def untrained(self) -> bool:
        """True when the artifact records that it was exported from seeded (untrained) weights."""
        import json

        from ..contract import WEIGHTS_KEY

        try:
            info = json.loads((getattr(self.backend, "metadata", None) or {}).get(WEIGHTS_KEY, "{}"))
        except (json.JSONDecodeError, TypeError):
            return False
        return isinstance(info, dict) and info.get("source") == "seeded-init"

    # -- running --------------------------------------------------------------------------------
    @overload
    def detect(
        self,
        images: SingleImage,
        *,
        conf_thresh: float | None = None,
        nms_thresh: float | None = None,
        top_k: int | None = None,
        keep_top_k: int | None = ...,
    ) -> ImageDetections: ...

    @overload
    def detect(
        self,
        images: Sequence[SingleImage],
        *,
        conf_thresh: float | None = None,
        nms_thresh: float | None = None,
        top_k: int | None = None,
        keep_top_k: int | None = ...,
    ) -> list[ImageDetections]: ...

    def detect(
        self,
        images: SingleImage | Sequence[SingleImage],
        *,
        conf_thresh: float | None = None,
        nms_thresh: float | None = None,
        top_k: int | None = None,
        keep_top_k: int | None = _UNSET,
    ) -> ImageDetections | list[ImageDetections]:
        """Detect objects in one image (returns :class:`ImageDetections`) or a list (returns a list).

        An image is a file path, encoded bytes, a PIL image or an ``H x W x 3`` uint8 array (RGB).
        Thresholds default to the model's config; ``keep_top_k=None`` means no per-image cap.
        """
        results, _ = self._run(images, conf_thresh, nms_thresh, top_k, keep_top_k, False, None)
        return results[0] if is_single_image(images) else results

    def detect_batch(self, images: Sequence[SingleImage], **thresholds: Any) -> list[ImageDetections]:
        """:meth:`detect` for a list of images, always returning a list (one entry per image)."""
        if is_single_image(images):
            raise TypeError("detect_batch takes a list of images; use detect() for a single image")
        results, _ = self._run(images, *self._thresholds(thresholds), False, None)
        return results

    def detect_array(
        self, images: Sequence[SingleImage], **thresholds: Any
    ) -> tuple[list[ImageDetections], np.ndarray]:
        """:meth:`detect_batch` plus ssd.pytorch's classic ``[B, C, top_k, 5]`` array (rows
        ``score, x1, y1, x2, y2`` normalised, class 0 empty), from the same single post-process pass."""
        if is_single_image(images):
            images = [images]  # type: ignore[list-item]
        results, array = self._run(images, *self._thresholds(thresholds), True, None)
        assert array is not None
        return results, array

    @staticmethod
    def _thresholds(kwargs: dict[str, Any]) -> list[Any]:
        args = [
            kwargs.pop(k, d)
            for k, d in (("conf_thresh", None), ("nms_thresh", None), ("top_k", None), ("keep_top_k", _UNSET))
        ]
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        return args

    def detect_timed(
        self, images: SingleImage | Sequence[SingleImage], **thresholds: Any
    ) -> tuple[list[ImageDetections], dict[str, float]]:
        """:meth:`detect_batch` plus seconds per stage: preprocess, h2d, compute, d2h, postprocess, total."""
        timings: dict[str, float] = {}
        items = [images] if is_single_image(images) else images
        results, _ = self._run(items, *self._thresholds(thresholds), False, timings)
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
        self,
        loc: np.ndarray,
        conf: np.ndarray,
        sizes: Sequence[tuple[int, int]],
        params: DetectParams | None = None,
    ) -> list[ImageDetections]:
        """Decode + Detect raw heads, boxes scaled to each ``(width, height)`` in ``sizes``."""
        params = params or self.params
        return self._to_pixels(_detect_normalised(loc, conf, self.priors, self.variances, params), sizes)

    def _to_pixels(
        self, dets: Sequence[Detections], sizes: Sequence[tuple[int, int]]
    ) -> list[ImageDetections]:
        out = []
        for d, (w, h) in zip(dets, sizes):
            px = d.scaled(w, h)
            labels = px.class_ids.astype(np.int64, copy=False)
            out.append(ImageDetections(
                boxes=px.boxes, scores=px.scores, class_ids=labels,
                class_names=tuple(self._names[labels].tolist()), image_size=(int(w), int(h)),
            ))  # fmt: skip
        return out

    # -- internals ------------------------------------------------------------------------------
    def _run(
        self, images: Any, conf_thresh: float | None, nms_thresh: float | None, top_k: int | None,
        keep_top_k: Any, return_array: bool, timings: dict[str, float] | None,
    ) -> tuple[list[ImageDetections], np.ndarray | None]:  # fmt: skip
        params = self.params_for(conf_thresh, nms_thresh, top_k, keep_top_k)
        items = image_list(images)
        if not items:
            return [], None
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
            return results, array
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
        return results, array

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
        """``(detections, num_detections)`` for a preprocessed batch."""
        rows, nums = [], []
        for part, m in self._parts(batch):
            t0 = time.perf_counter()
            dets, num = self.backend.run_detections(part)  # type: ignore[attr-defined]
            if timings is not None:
                timings["compute"] = timings.get("compute", 0.0) + time.perf_counter() - t0
            rows.append(dets[:m])
            nums.append(num[:m])
        return np.concatenate(rows), np.concatenate(nums)

    def _parts(self, batch: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        """The batch in pieces the artifact accepts, each with its count of real images: split above
        the largest batch, zero-padded below the smallest (static-batch artifacts)."""
        s = self.config.size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise ValueError(f"expected a batch [N,3,{s},{s}], got {batch.shape}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        lo, hi = self.backend.batch_range
        n = batch.shape[0]
        chunk = max(hi if hi is not None else n, 1)
        for start in range(0, n, chunk):
            part = batch[start : start + chunk]
            m = part.shape[0]
            if m < lo:
                part = np.concatenate([part, np.zeros((lo - m,) + part.shape[1:], np.float32)])
            yield part, m

    def _infer(self, batch: np.ndarray, timings: dict[str, float] | None) -> tuple[np.ndarray, np.ndarray]:
        locs, confs = [], []
        for part, m in self._parts(batch):
            if timings is None:
                loc, conf = self.backend.run(part)
            else:
                loc, conf, st = self.backend.run_timed(part)
                for key, val in (("h2d", st.h2d), ("compute", st.compute), ("d2h", st.d2h)):
                    timings[key] = timings.get(key, 0.0) + val
            self._check_outputs(loc, conf)
            locs.append(loc[:m])
            confs.append(conf[:m])
        if len(locs) == 1:
            return locs[0], confs[0]
        return np.concatenate(locs), np.concatenate(confs)

    def _check_outputs(self, loc: np.ndarray, conf: np.ndarray) -> None:
        """A graph that disagrees with its metadata, or outputs NaN, is an error, not an empty result."""
        p, c = self.config.num_priors, self.config.num_classes
        if loc.shape[1:] != (p, 4) or conf.shape[1:] != (p, c):
            raise BackendError(
                f"{self.backend.path}: the network outputs loc {list(loc.shape)} and conf "
                f"{list(conf.shape)}, but its config says {p} priors and {c} classes: the metadata does not "
                "belong to this graph"
            )
        if not (np.isfinite(conf).all() and np.isfinite(loc).all()):
            raise BackendError(f"{self.backend.path}: the network output has non-finite values (NaN or inf)")

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Detector({self.config.name}, backend={self.backend.name}, precision={self.backend.precision}, "
            f"path={self.backend.path!r})"
        )
