"""Optional compiled kernels (numba) for the costliest numpy steps of the runtime path.

The resize + normalise of preprocessing, Detect's per-class top-k and its greedy NMS are the parts
of a ``Detector`` call that numpy cannot do in a few whole-array passes (the resize gathers every
tap, top-k needs a selection per class, NMS as an all-pairs matrix costs ~15 passes per pair).
With numba installed (``pip install 'ssd_deploy[jit]'``) they run as compiled loops that give the
same bits as the numpy path (docs/performance.md); without it, with ``SSD_DEPLOY_JIT=0``, with
numba's own ``NUMBA_DISABLE_JIT=1``, or when numba fails to import or compile them, the numpy path
runs. numba caches compiled code on disk, so only the first process on a machine pays the compile
(~6 s here); later processes load it in ~1 s. :func:`warm_up` does either up front.

Each step takes the kernels once (``k = kernels()``; ``None`` means the numpy path) and uses that
object throughout, so a :func:`disabled` block entered by another thread meanwhile cannot switch
paths in the middle of a step. Steps of one call may then run on different paths; both give the
same bits, so the result does not change.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["ENV", "Kernels", "disabled", "kernels", "status", "warm_up"]

#: Set to ``0`` to run the numpy path even where numba is installed.
ENV = "SSD_DEPLOY_JIT"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: Kernels | None = None
_why_not: str | None = None
_tried = False
_warm = False
_off = 0  # depth of `disabled()` blocks


class Kernels:
    """The compiled kernels, with input checks and the array kinds they are compiled for."""

    def __init__(self, module: ModuleType, version: str) -> None:
        self._k = module
        self.version = version

    def greedy_nms(
        self, coords: np.ndarray, keep: np.ndarray, starts: np.ndarray, iou_threshold: float,
        nan_suppresses: bool,
    ) -> np.ndarray:  # fmt: skip
        """Greedy NMS over groups ``starts[g]:starts[g + 1]`` of the boxes given as coordinate
        planes ``coords [4, M]`` (``x1, y1, x2, y2``; each group sorted by descending score), in
        float64 for float64 input, else float32. ``keep [M]`` marks valid candidates; the kept mask
        is returned. Suppression: ``not iou <= t`` (``nan_suppresses``) or ``iou > t``."""
        coords = np.asarray(coords)
        dtype = np.float64 if coords.dtype.kind == "f" and coords.dtype.itemsize == 8 else np.float32
        x1, y1, x2, y2 = np.ascontiguousarray(coords, dtype=dtype)
        out = np.array(keep, dtype=bool, copy=True)
        starts = np.asarray(starts, dtype=np.int64)
        if starts.ndim != 1 or starts.size < 1 or starts[0] != 0 or starts[-1] != out.shape[0]:
            raise ValueError(f"starts must run from 0 to {out.shape[0]}, got {starts}")
        if np.any(np.diff(starts) < 0):
            raise ValueError("starts must not decrease")
        self._k.greedy_nms(x1, y1, x2, y2, out, starts, dtype(iou_threshold), dtype(0), bool(nan_suppresses))
        return out

    def top_k_candidates(
        self, conf: np.ndarray, conf_thresh: float, top_k: int, background: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per (image, class) of ``conf [B, P, C]``: the ``top_k`` best priors with score >
        ``conf_thresh`` (>= 0; ties to the lower prior; class ``background`` skipped). Returns
        ``(group, prior, score, rank)`` ordered by group (``image * C + class``), then descending
        score, with ``rank`` the position in the group."""
        thresh = np.float32(conf_thresh) + np.float32(0.0)  # -0.0 -> +0.0: bit patterns are compared
        if not thresh >= 0:  # also NaN
            raise ValueError(f"conf_thresh must be >= 0, got {conf_thresh}")
        conf = np.asarray(conf)
        if conf.ndim != 3:
            raise ValueError(f"conf must be [B, P, C], got shape {conf.shape}")
        b, p, c = conf.shape
        k = max(0, min(int(top_k), p))
        cap = b * c * k
        group, prior, rank = (np.empty(cap, dtype=np.int64) for _ in range(3))
        score = np.empty(cap, dtype=np.float32)
        conf = np.ascontiguousarray(conf, dtype=np.float32)
        n = self._k.top_k_candidates(conf, thresh, k, int(background), group, prior, score, rank)
        return group[:n], prior[:n], score[:n], rank[:n]

    def resize_normalize(
        self, img: np.ndarray, tables: tuple[Any, ...], order: np.ndarray, mean: np.ndarray, out: np.ndarray
    ) -> None:
        """Resize ``img [H, W, C]`` uint8 with the taps ``tables`` (rows then columns, as
        ``preprocess._axis_table`` makes them), reorder the channels, subtract ``mean`` and write
        ``out [3, S_h, S_w]`` float32."""
        self._k.resize_normalize(img, *tables, order, mean, out)


def kernels() -> Kernels | None:
    """The compiled kernels, or ``None`` when the numpy path is to run (see the module doc)."""
    global _loaded, _why_not, _tried
    if _off:
        return None
    if _tried:
        return _loaded
    with _lock:
        if not _tried:
            _loaded, _why_not = _load()
            _tried = True
    return _loaded


def _load() -> tuple[Kernels | None, str | None]:
    if os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None, f"disabled by {ENV}"
    try:
        import numba

        if numba.config.DISABLE_JIT:  # the kernels would run as Python loops, far slower than numpy
            return None, "NUMBA_DISABLE_JIT is set"
        from . import _numba_kernels
    except ImportError as e:
        if getattr(e, "name", None) in ("numba", "llvmlite"):
            return None, "numba is not installed (pip install 'ssd_deploy[jit]')"
        _log.warning("numba kernels unavailable (%s); using the numpy path", e)
        return None, f"numba failed to import ({e})".splitlines()[0]
    except Exception as e:  # noqa: BLE001 - e.g. no usable cache directory: numpy still works
        _log.warning("numba kernels unavailable (%s: %s); using the numpy path", type(e).__name__, e)
        return None, f"numba failed to load the kernels ({type(e).__name__})"
    return Kernels(_numba_kernels, numba.__version__), None


@contextmanager
def disabled() -> Iterator[None]:
    """Run the numpy path inside the block, process-wide (for tests and benchmarks that compare the
    two paths). Steps already running finish on the path they started on."""
    global _off
    with _lock:
        _off += 1
    try:
        yield
    finally:
        with _lock:
            _off -= 1


def status() -> str:
    """One line for reports: which path pre- and post-processing take."""
    k = kernels()
    if k is None:
        return f"numpy ({_why_not or 'numba kernels disabled in this block'})"
    return f"numba {k.version} kernels"


def warm_up() -> bool:
    """Load (or compile, the first time on a machine) the kernels now rather than on the first
    image; returns whether they are in use. A kernel that fails to compile switches this process
    to the numpy path, with a warning."""
    global _loaded, _why_not, _warm
    k = kernels()
    if k is None or _warm:
        return k is not None
    try:
        # Each array kind is a specialisation of its own: inputs both writable and read-only
        # (np.asarray of a PIL image is read-only, and so may be a caller's scores or boxes), and
        # the read-only tap tables of preprocessing.
        taps = [np.array([0, 1]), np.array([0, 1]), np.ones(2, np.float32), np.zeros(2, np.float32)]
        for a in taps:
            a.flags.writeable = False
        out = np.empty((3, 2, 2), dtype=np.float32)
        for writeable in (True, False):
            conf = np.full((1, 2, 2), 0.5, dtype=np.float32)
            planes = np.array([[0, 0], [0, 0], [1, 1], [1, 0.9]], dtype=np.float32)
            img = np.zeros((2, 2, 3), dtype=np.uint8)
            for a in (conf, planes, img):
                a.flags.writeable = writeable
            k.top_k_candidates(conf, 0.01, 1, 0)
            k.greedy_nms(planes, np.ones(2, dtype=bool), np.array([0, 2]), 0.5, True)
            k.resize_normalize(img, (*taps, *taps), np.arange(3), np.zeros(3, np.float32), out)
    except Exception as e:  # noqa: BLE001 - a compile failure must not stop inference
        _log.warning("numba kernels failed to compile (%s: %s); using the numpy path", type(e).__name__, e)
        with _lock:
            _loaded, _why_not = None, f"numba failed to compile the kernels ({type(e).__name__})"
        return False
    _warm = True
    return True
