"""Image loading and batching for the runtime (docs/ssd.md ("Preprocessing")), with numpy and Pillow
(the resize + mean runs as a numba kernel with the same results where :mod:`ssd_deploy.ops.jit` has
one).

``load_image`` turns whatever a caller has (a path, encoded bytes, a PIL image, an array) into an
``[H, W, 3]`` uint8 RGB array, and turns every way that can fail on untrusted input (not an image,
empty, truncated, a decompression bomb, an unsupported mode) into one :class:`ImageError` naming
the source. ``preprocess`` warp-resizes to the model size as OpenCV's ``INTER_LINEAR`` does on
float images (what ssd.pytorch trained with: no letterbox, no antialias), orders the channels and
subtracts the mean the model's config asks for (no division by 255), and stacks NCHW.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import SSDConfig
from .errors import InputError
from .ops import jit

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "ImageSource",
    "load_image",
    "preprocess",
    "resize_bilinear",
]

#: Largest image (width x height) ``load_image`` decodes by default: ~50 MP, above any camera
#: photo, far below what would exhaust memory (a 50 MP RGB image is 150 MB).
DEFAULT_MAX_PIXELS = 50_000_000

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image


class ImageError(InputError):
    """An input is not a usable image; the message is one line naming the source."""


def _source_name(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(src, Image.Image):
        return "<PIL image>"
    return "<array>"


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8 bit by rounding ``v * 255 / 65535`` (not by clipping at 255)."""
    v = np.clip(values, 0, 65535).astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb_array(im: Image.Image, name: str) -> np.ndarray:
    """A decoded PIL image of any common mode -> ``[H, W, 3]`` uint8 RGB (alpha dropped)."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (PNG, TIFF). Pillow's own convert("RGB") clips at 255 instead of scaling.
        gray = _scale_16bit(np.asarray(im).astype(np.int64))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageError(f"{name}: floating-point images (mode F) are not supported")
    if mode in ("P", "PA"):
        # Through RGBA so that palette transparency is handled (and then dropped) without a warning.
        im = im.convert("RGBA")
    try:
        rgb = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"{name}: cannot convert image mode {mode} to RGB ({e})") from None
    return np.array(rgb, dtype=np.uint8)


def _from_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.size == 0:
        raise ImageError(f"{name}: empty array (shape {arr.shape})")
    if arr.dtype != np.uint8:
        raise ImageError(f"{name}: expected a uint8 array, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        if arr.shape[2] == 1:
            return np.repeat(arr, 3, axis=2)
        return np.ascontiguousarray(arr[:, :, :3])
    raise ImageError(f"{name}: expected an HxW or HxWx3 array, got shape {arr.shape}")


def load_image(src: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``src`` into an ``[H, W, 3]`` uint8 RGB array.

    ``src`` is a file path, encoded bytes, a PIL image, or an ``HxW`` / ``HxWx3`` uint8 array
    (taken as RGB; an ``HxWx4`` array loses its alpha). Grayscale, palette, RGBA/LA (alpha
    dropped, not composited), CMYK and 16-bit images are converted; JPEG EXIF orientation is
    applied. Images larger than ``max_pixels`` (width x height, checked from the header before any
    pixel is decoded) are refused, and so is anything Pillow itself calls a decompression bomb;
    ``None`` lifts our limit (Pillow's own stays). Every failure is an :class:`ImageError`.
    """
    name = _source_name(src)
    if isinstance(src, np.ndarray):
        return _from_array(src, name)
    if isinstance(src, Image.Image):
        return _decode(src, name, max_pixels, owned=False)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageError(f"{name}: empty data")
        return _open_and_decode(io.BytesIO(data), name, max_pixels)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except OSError as e:
            raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image")
        if size == 0:
            raise ImageError(f"{name}: empty file")
        try:
            with open(path, "rb") as fh:
                return _open_and_decode(fh, name, max_pixels)
        except OSError as e:
            raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
    raise ImageError(f"{name}: unsupported image source of type {type(src).__name__}")


def _open_and_decode(fp: Any, name: str, max_pixels: int | None) -> np.ndarray:
    try:
        im = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large to decode safely ({e})".splitlines()[0]) from None
    except Exception as e:  # noqa: BLE001 - untrusted bytes can break a decoder in many ways
        raise ImageError(
            f"{name}: cannot read image header ({type(e).__name__}: {e})".splitlines()[0]
        ) from None
    with im:
        return _decode(im, name, max_pixels, owned=True)


def _decode(im: Image.Image, name: str, max_pixels: int | None, owned: bool) -> np.ndarray:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} MP, over the "
            f"{max_pixels / 1e6:.1f} MP limit (max_pixels)"
        )
    try:
        im.load()
        # Camera JPEGs store rotation as an EXIF tag; the pixels are in sensor order. An image we
        # opened ourselves is turned in place (no copy); a caller's image is left untouched.
        if owned:
            ImageOps.exif_transpose(im, in_place=True)
        else:
            im = ImageOps.exif_transpose(im)
        return _to_rgb_array(im, name)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large to decode safely ({e})".splitlines()[0]) from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode a {width}x{height} image") from None
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data fails in many decoder-specific ways
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})".splitlines()[0]) from None


@lru_cache(maxsize=32)
def _axis_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, as OpenCV's INTER_LINEAR computes them.

    Pixel centres are aligned (``src = (dst + 0.5) * n_in / n_out - 0.5``); a source position left
    of the first or right of the last pixel takes that edge pixel with weight 1. The arrays are
    read-only because they are shared between callers and threads.
    """
    scale = 1.0 / (n_out / n_in)  # as OpenCV: the inverse of its dst/src ratio
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    low, high = i0 < 0, i0 >= n_in - 1
    frac[low | high] = 0.0
    i0[low] = 0
    i0[high] = n_in - 1
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = frac
    w0 = (np.float32(1.0) - frac).astype(np.float32)
    for a in (i0, i1, w0, w1):
        a.flags.writeable = False
    return i0, i1, w0, w1


def resize_bilinear(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Warp-resize ``[H, W, C]`` to ``[size, size, C]`` (or ``size=(height, width)``), float32.

    Matches ``cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)``: pixel
    centres aligned, two taps per axis, no antialiasing when shrinking, edges replicated.
    """
    if img.ndim != 3:
        raise ValueError(f"resize_bilinear expects [H, W, C], got shape {img.shape}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    in_h, in_w, ch = img.shape
    y0, y1, wy0, wy1 = _axis_table(in_h, out_h)
    x0, x1, wx0, wx1 = _axis_table(in_w, out_w)
    # Gather the needed rows, then the needed columns of those (np.take along one axis is several
    # times faster than 2-D fancy indexing); horizontal pass first, then vertical, as OpenCV does.
    # Rows are handled as [out_h, out_w * C] with per-column weights repeated per channel, so every
    # multiply runs over long contiguous rows instead of broadcasting over a 3-wide channel axis.
    rows0, rows1 = np.take(img, y0, axis=0), np.take(img, y1, axis=0)
    wx0c, wx1c = np.repeat(wx0, ch), np.repeat(wx1, ch)
    flat = (out_h, out_w * ch)
    top = np.multiply(np.take(rows0, x0, axis=1).reshape(flat), wx0c, dtype=np.float32)
    tmp = np.multiply(np.take(rows0, x1, axis=1).reshape(flat), wx1c, dtype=np.float32)
    top += tmp
    bot = np.multiply(np.take(rows1, x0, axis=1).reshape(flat), wx0c, dtype=np.float32)
    np.multiply(np.take(rows1, x1, axis=1).reshape(flat), wx1c, out=tmp, dtype=np.float32)
    bot += tmp
    top *= wy0[:, None]
    bot *= wy1[:, None]
    top += bot
    top = top.reshape(out_h, out_w, ch)
    return top.astype(np.float32, copy=False)


def is_single_image(images: Any) -> bool:
    """Whether ``images`` is one image source (path, bytes, PIL image, 2-D/3-D array), not a sequence."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


def image_list(images: Any) -> list[Any]:
    """``images`` as a list of image sources: one source becomes a list of one; anything that is
    neither a source nor a sequence of them is an :class:`ImageError`."""
    if is_single_image(images):
        return [images]
    if isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4):
        return list(images)
    raise ImageError(
        f"<{type(images).__name__}>: expected an image (path, bytes, PIL image, HxWx3 uint8 array) "
        "or a list of them"
    )


def preprocess(
    images: ImageSource | Sequence[ImageSource],
    config: SSDConfig,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Images -> ``(batch [N, 3, S, S] float32 C-contiguous, [(width, height), ...])``.

    Each image is loaded (:func:`load_image`), warp-resized to the model size, put in
    ``config.channel_order`` and has ``config.mean`` (given in that order) subtracted; pixel values
    stay in 0..255 minus the mean. The sizes are the original ones, to map boxes back with
    :func:`ssd_deploy.ops.boxes.scale_boxes`. ``images`` may be one source or a sequence of them.
    """
    items: list[ImageSource] = image_list(images)
    s = config.size
    batch = np.empty((len(items), 3, s, s), dtype=np.float32)
    mean = [np.float32(m) for m in config.mean]
    # Pixels come out of load_image as RGB; the model may want BGR.
    order = (2, 1, 0) if config.channel_order == "BGR" else (0, 1, 2)
    kernels = jit.kernels()
    if kernels is not None:
        order_arr, mean_arr = np.array(order, dtype=np.int64), np.array(mean, dtype=np.float32)
    sizes = []
    for i, src in enumerate(items):
        try:
            rgb = load_image(src, max_pixels=max_pixels)
        except ImageError as e:
            if len(items) == 1:
                raise
            raise ImageError(f"image {i} of {len(items)}: {e}") from None
        sizes.append((int(rgb.shape[1]), int(rgb.shape[0])))
        if kernels is not None:  # the same arithmetic as below in one compiled pass (ssd_deploy.ops.jit)
            tables = _axis_table(rgb.shape[0], s) + _axis_table(rgb.shape[1], s)
            kernels.resize_normalize(rgb, tables, order_arr, mean_arr, batch[i])
            continue
        resized = resize_bilinear(rgb, s)
        for c, src_c in enumerate(order):  # channel reorder, mean and HWC -> CHW in one pass each
            np.subtract(resized[:, :, src_c], mean[c], out=batch[i, c])
    return batch, sizes
