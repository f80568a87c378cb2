"""What one serving replica does with a request, independent of Ray.

The HTTP layer (:mod:`ssd_deploy.serve.app`) reads the body and hands it here:
:meth:`DetectionService.prepare` checks and decodes one request (content type, size, image,
query parameters) into a preprocessed tensor, and :meth:`DetectionService.run_batch` runs many
prepared requests through the network as one batch. Keeping this free of Ray lets the tests and
the benchmark drive exactly the code the service runs.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MAX_TOP_K, ConfigError, DetectParams
from ..errors import SSDDeployError
from ..preprocess import ImageError, load_image, preprocess
from ..runtime.backend import BackendError
from ..runtime.detector import Detector

__all__ = [
    "ACCEPTED_TYPES",
    "DetectionService",
    "Limits",
    "Prepared",
    "RequestError",
    "extract_image",
    "params_from_query",
    "split_multipart",
]

#: Content types the ``/detect`` endpoint takes besides ``multipart/form-data``. The bytes are
#: sniffed as well: ``application/octet-stream`` is fine when they are a JPEG or PNG.
ACCEPTED_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg", "image/png", "application/octet-stream")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
#: Query parameters ``/detect`` understands; anything else is a 400 so typos do not pass silently.
QUERY_KEYS = ("conf_thresh", "nms_thresh", "top_k", "keep_top_k")
#: Parts a multipart body may carry at most (one image plus a few form fields).
_MAX_PARTS = 8


class RequestError(SSDDeployError):
    """A request the service refuses: HTTP ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may cost. ``max_body_bytes`` caps the encoded upload, ``max_pixels`` the
    decoded image (a small PNG can decode to gigabytes), ``max_top_k`` the NMS candidates per class
    a request may ask for and ``max_detections`` the detections one answer carries (``keep_top_k``):
    with ``conf_thresh=0`` every candidate survives, so these two bound the post-processing time
    and the size of the JSON answer (docs/serving.md, "Request limits")."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_top_k: int = 1000
    max_detections: int = 1000

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_pixels, self.max_top_k, self.max_detections) < 1:
            raise ValueError(f"limits must be positive, got {self}")
        if self.max_top_k > MAX_TOP_K:
            raise ValueError(f"max_top_k must be <= {MAX_TOP_K}, got {self.max_top_k}")


@dataclass(frozen=True)
class Prepared:
    """One decoded, preprocessed request waiting for a batch."""

    tensor: np.ndarray  # [1, 3, S, S] float32
    size: tuple[int, int]  # original (width, height)
    params: DetectParams


# -- request parsing (pure functions) ----------------------------------------------------------


def _parse_header_value(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/form-data; boundary="x"'`` -> ``('multipart/form-data', {'boundary': 'x'})``."""
    head, *rest = value.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, sep, val = item.strip().partition("=")
        if sep:
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1]
            params[key.strip().lower()] = val
    return head.strip().lower(), params


@dataclass(frozen=True)
class Part:
    """One part of a ``multipart/form-data`` body."""

    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def split_multipart(body: bytes, boundary: str) -> list[Part]:
    """Split a ``multipart/form-data`` body (RFC 7578) into its parts.

    Written here rather than pulled from a dependency: the service needs only this, and limits
    (part count) apply while splitting. Raises :class:`RequestError` (400) on malformed bodies.
    """
    if not boundary or len(boundary) > 200:
        raise RequestError(400, "multipart body without a valid boundary parameter in its Content-Type")
    delim = b"--" + boundary.encode("latin-1")
    chunks = body.split(delim)
    # chunks[0] is the preamble; a well-formed body ends with the closing delimiter "--".
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise RequestError(400, "malformed multipart body: closing boundary not found")
    parts: list[Part] = []
    for raw in chunks[1:-1]:
        if len(parts) >= _MAX_PARTS:
            raise RequestError(400, f"multipart body has more than {_MAX_PARTS} parts")
        if not raw.startswith(b"\r\n") or not raw.endswith(b"\r\n"):
            raise RequestError(400, "malformed multipart body: boundary not followed by CRLF")
        raw = raw[2:-2]
        head, sep, data = raw.partition(b"\r\n\r\n")
        if not sep:
            if raw.endswith(b"\r\n"):  # headers followed by an empty body
                head, data = raw[:-2], b""
            else:
                raise RequestError(400, "malformed multipart body: part without a header block")
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            if not line:
                continue
            key, colon, val = line.decode("latin-1").partition(":")
            if not colon:
                raise RequestError(400, "malformed multipart body: bad part header line")
            headers[key.strip().lower()] = val.strip()
        disp, dparams = _parse_header_value(headers.get("content-disposition", ""))
        ctype = headers.get("content-type")
        parts.append(Part(
            name=dparams.get("name"), filename=dparams.get("filename"),
            content_type=_parse_header_value(ctype)[0] if ctype else None, data=data,
        ))  # fmt: skip
    return parts


def _sniff(data: bytes) -> str | None:
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    return None


def extract_image(content_type: str | None, body: bytes) -> bytes:
    """The encoded image in a request body: the raw body, or the ``image`` (or only file) part of
    a multipart form. Raises :class:`RequestError` with the right 4xx status."""
    if not content_type:
        raise RequestError(415, "missing Content-Type; send image/jpeg, image/png or multipart/form-data")
    mime, params = _parse_header_value(content_type)
    if mime == "multipart/form-data":
        if not body:
            raise RequestError(400, "empty request body; send a JPEG or PNG image")
        parts = split_multipart(body, params.get("boundary", ""))
        # The image is the field named 'image' or any file upload; other form fields are ignored.
        files = [p for p in parts if p.filename is not None or p.name == "image"]
        if not files:
            raise RequestError(
                400, "multipart body has no file part; send the image in a field named 'image'"
            )
        if len(files) > 1:
            raise RequestError(
                400, f"multipart body has {len(files)} files; send one image per request "
                "(the server batches concurrent requests itself)"
            )  # fmt: skip
        part = files[0]
        if part.content_type and part.content_type not in ACCEPTED_TYPES:
            raise RequestError(
                415, f"image part has Content-Type {part.content_type}; send image/jpeg or image/png"
            )
        data = part.data
    elif mime in ACCEPTED_TYPES:
        if not body:
            raise RequestError(400, "empty request body; send a JPEG or PNG image")
        data = body
    else:
        raise RequestError(
            415, f"unsupported Content-Type {mime!r}; send image/jpeg, image/png or multipart/form-data"
        )  # fmt: skip
    if not data:
        raise RequestError(400, "empty image; send a JPEG or PNG image")
    if _sniff(data) is None:
        raise RequestError(400, f"the {len(data)}-byte upload is not a JPEG or PNG image")
    return data


def _image_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height from the image header alone, or None if the header cannot be read.

    The pixel limit is checked before the decoder allocates anything; this reads a few bytes of
    the PNG IHDR chunk or the JPEG frame header without decoding.
    """
    kind = _sniff(data)
    if kind == "PNG":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        return None
    if kind == "JPEG":
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill bytes
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                i += 2
                continue
            seg_len = struct.unpack(">H", data[i + 2 : i + 4])[0]
            # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > n:
                    return None
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(w), int(h)
            if seg_len < 2:
                return None
            i += 2 + seg_len
        return None
    return None


def params_from_query(
    query: Mapping[str, str], base: DetectParams, limits: Limits | None = None
) -> DetectParams:
    """Detect parameters from ``?conf_thresh=0.5&top_k=100&keep_top_k=50``; 400 on bad values.

    ``top_k`` and ``keep_top_k`` may not pass ``limits.max_top_k`` and ``limits.max_detections``
    (``keep_top_k=none`` is refused: an answer is always capped); the artifact's own defaults are
    clamped to the same limits when the request does not set them.
    """
    limits = limits or Limits()
    unknown = sorted(set(query) - set(QUERY_KEYS))
    if unknown:
        raise RequestError(
            400, f"unknown query parameter(s) {', '.join(unknown)}; known: {', '.join(QUERY_KEYS)}"
        )
    changes: dict[str, Any] = {}
    for key in ("conf_thresh", "nms_thresh"):
        if key in query:
            try:
                value = float(query[key])
            except ValueError:
                raise RequestError(400, f"{key} must be a number, got {query[key]!r}") from None
            if not math.isfinite(value):
                raise RequestError(400, f"{key} must be finite, got {query[key]!r}")
            changes[key] = value
    caps = {"top_k": limits.max_top_k, "keep_top_k": limits.max_detections}
    for key, cap in caps.items():
        if key in query:
            text = query[key].strip().lower()
            if key == "keep_top_k" and text in ("none", "all", ""):
                raise RequestError(
                    400, f"keep_top_k={query[key]!r} is not served: pass a number in [1, {cap}]"
                )
            try:
                value = int(text)
            except ValueError:
                raise RequestError(400, f"{key} must be an integer, got {query[key]!r}") from None
            if not 1 <= value <= cap:
                raise RequestError(400, f"{key} must be in [1, {cap}] (this server's limit), got {value}")
            changes[key] = value
    changes.setdefault("top_k", min(base.top_k, limits.max_top_k))
    changes.setdefault("keep_top_k", min(base.keep_top_k or limits.max_detections, limits.max_detections))
    try:
        return base.replace(**changes)
    except ConfigError as e:
        raise RequestError(400, str(e)) from None


# -- the service ----------------------------------------------------------------------------------


class DetectionService:
    """One :class:`Detector` plus the request checks; the unit a Ray Serve replica wraps.

    ``prepare`` may run in many threads at once (decoding is per request); ``run_batch`` runs
    one batch through the network and post-processes each request with its own parameters.
    """

    def __init__(
        self,
        engine: str | os.PathLike[str],
        *,
        limits: Limits | None = None,
        params: DetectParams | None = None,
        backend_options: Mapping[str, Any] | None = None,
        warmup: bool = True,
    ) -> None:
        self.engine = str(Path(engine))
        self.limits = limits or Limits()
        self.detector = Detector.load(self.engine, params=params, **dict(backend_options or {}))
        self.config = self.detector.config
        self._closed = False
        self._lock = threading.Lock()
        self.batches = 0
        self.images = 0
        if warmup:
            # The first run of a session allocates and, for ONNX files, checks the priors; pay
            # that before the replica reports ready rather than on the first client's request.
            s = self.config.size
            self.detector.infer(np.zeros((1, 3, s, s), np.float32))

    # -- request side ---------------------------------------------------------------------------
    def prepare(
        self, content_type: str | None, body: bytes, query: Mapping[str, str] | None = None
    ) -> Prepared:
        """Check and decode one request; raises :class:`RequestError` for anything malformed."""
        if len(body) > self.limits.max_body_bytes:
            raise RequestError(413, self.body_too_large(len(body)))
        params = params_from_query(query or {}, self.detector.params, self.limits)
        data = extract_image(content_type, body)
        dims = _image_dimensions(data)
        if dims is not None and dims[0] * dims[1] > self.limits.max_pixels:
            raise RequestError(413, self.too_many_pixels(*dims))
        try:
            image = load_image(data, max_pixels=self.limits.max_pixels)
        except ImageError as e:
            raise RequestError(400, f"cannot decode the image: {e}") from None
        tensor, sizes = preprocess([image], self.config)
        w, h = sizes[0]
        return Prepared(tensor=tensor, size=(int(w), int(h)), params=params)

    def body_too_large(self, n: int | None = None) -> str:
        got = f"{n} bytes" if n is not None else "the request body"
        return f"{got} exceeds the upload limit of {self.limits.max_body_bytes} bytes"

    def too_many_pixels(self, w: int, h: int) -> str:
        return (f"image is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is "
                f"{self.limits.max_pixels / 1e6:.1f} megapixels")  # fmt: skip

    # -- batch side -----------------------------------------------------------------------------
    def run_batch(self, items: Sequence[Prepared]) -> list[dict[str, Any]]:
        """Run prepared requests as one network batch; one JSON-ready dict per request, in order."""
        if self._closed:
            raise BackendError(f"{self.engine}: the service is closed")
        if not items:
            return []
        batch = items[0].tensor if len(items) == 1 else np.concatenate([it.tensor for it in items])
        loc, conf = self.detector.infer(batch)
        out: list[dict[str, Any] | None] = [None] * len(items)
        # Requests in one batch may ask for different thresholds: post-process each group once.
        groups: dict[DetectParams, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.params, []).append(i)
        for params, idx in groups.items():
            sel = np.asarray(idx)
            results = self.detector.postprocess(loc[sel], conf[sel], [items[i].size for i in idx], params)
            for i, res in zip(idx, results):
                out[i] = res.to_dict()
        with self._lock:
            self.batches += 1
            self.images += len(items)
        return out  # type: ignore[return-value]

    def info(self) -> dict[str, Any]:
        """Model facts for ``/readyz``."""
        backend = self.detector.backend
        p = self.detector.params
        return {
            "model": self.config.name, "engine": os.path.basename(self.engine), "backend": backend.name,
            "precision": backend.precision, "input_size": self.config.size,
            "num_classes": self.config.num_classes,
            "detect": {"conf_thresh": p.conf_thresh, "nms_thresh": p.nms_thresh, "top_k": p.top_k,
                       "keep_top_k": p.keep_top_k},
            "limits": {"max_body_bytes": self.limits.max_body_bytes, "max_pixels": self.limits.max_pixels,
                       "max_top_k": self.limits.max_top_k, "max_detections": self.limits.max_detections},
            "batches": self.batches, "images": self.images,
        }  # fmt: skip

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.detector.close()
