"""Optional compiled kernels (numba) for the costliest numpy steps of the runtime path.

The resize + normalise of preprocessing, Detect's per-class top-k and its greedy NMS are the parts
of a ``Detector`` call that numpy cannot do in a few whole-array passes (the resize gathers every
tap, top-k needs a selection per class, NMS as an all-pairs matrix costs ~15 passes per pair).
With numba installed (``pip install 'ssd_deploy[jit]'``) they run as compiled loops that give the
same bits as the numpy path (docs/performance.md); without it, or with ``SSD_DEPLOY_JIT=0``, the
numpy path runs. numba caches compiled code on disk, so only the first process on a machine pays
the compile (~6 s here); later processes load it in ~1 s. :func:`warm_up` does either up front.
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

__all__ = [
    "ENV",
    "disabled",
    "greedy_nms",
    "kernels",
    "resize_normalize",
    "status",
    "top_k_candidates",
    "warm_up",
]

#: Set to ``0`` to run the numpy path even where numba is installed.
ENV = "SSD_DEPLOY_JIT"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: ModuleType | None = None
_why_not: str | None = None
_tried = False
_off = 0  # depth of `disabled()` blocks


def kernels() -> ModuleType | None:
    """The compiled kernels module, or ``None`` when numba is missing, disabled, or broken."""
    global _loaded, _why_not, _tried
    if _off:
        return None
    if _tried:
        return _loaded
    with _lock:
        if _tried:
            return _loaded
        if os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off"):
            _why_not = f"disabled by {ENV}"
        else:
            try:
                from . import _numba_kernels

                _loaded = _numba_kernels
            except ImportError as e:
                if getattr(e, "name", None) not in ("numba", "llvmlite"):
                    _log.warning("numba kernels unavailable (%s); using the numpy path", e)
                _why_not = "numba is not installed (pip install 'ssd_deploy[jit]')"
            except Exception as e:  # noqa: BLE001 - e.g. no writable cache dir: numpy still works
                _log.warning("numba kernels unavailable (%s: %s); using the numpy path", type(e).__name__, e)
                _why_not = f"numba failed to load ({type(e).__name__})"
        _tried = True
    return _loaded


@contextmanager
def disabled() -> Iterator[None]:
    """Run the numpy path inside the block, process-wide (for tests and benchmarks that compare the
    two paths; not for code that other threads run meanwhile)."""
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
    import numba

    return f"numba {numba.__version__} kernels"


def greedy_nms(
    coords: np.ndarray, keep: np.ndarray, starts: np.ndarray, iou_threshold: float, nan_suppresses: bool
) -> np.ndarray:
    """Greedy NMS over groups ``starts[g]:starts[g + 1]`` of the boxes given as coordinate planes
    ``coords [4, M]`` (``x1, y1, x2, y2``; each group sorted by descending score). ``keep [M]``
    marks valid candidates; the kept mask is returned. Requires :func:`kernels`."""
    k = kernels()
    assert k is not None, "greedy_nms needs the numba kernels"
    dtype = np.float64 if coords.dtype == np.float64 else np.float32
    x1, y1, x2, y2 = np.ascontiguousarray(coords, dtype=dtype)
    out = np.array(keep, dtype=bool, copy=True)
    k.greedy_nms(
        x1, y1, x2, y2, out, np.asarray(starts, dtype=np.int64), dtype(iou_threshold), bool(nan_suppresses)
    )
    return out


def top_k_candidates(
    conf: np.ndarray, conf_thresh: float, top_k: int, background: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (image, class) of ``conf [B, P, C]`` float32: the ``top_k`` best priors with score >
    ``conf_thresh`` (ties to the lower prior; class ``background`` skipped). Returns ``(group,
    prior, score, rank)`` ordered by group (``image * C + class``), then descending score, with
    ``rank`` the position in the group. Requires :func:`kernels`."""
    kern = kernels()
    assert kern is not None, "top_k_candidates needs the numba kernels"
    b, p, c = conf.shape
    k = max(0, min(int(top_k), p))
    cap = b * c * k
    group, prior, rank = (np.empty(cap, dtype=np.int64) for _ in range(3))
    score = np.empty(cap, dtype=np.float32)
    conf = np.ascontiguousarray(conf, dtype=np.float32)
    thresh = np.float32(conf_thresh) + np.float32(0.0)  # -0.0 -> +0.0: the kernel compares bit patterns
    n = kern.top_k_candidates(conf, thresh, k, int(background), group, prior, score, rank)
    return group[:n], prior[:n], score[:n], rank[:n]


def resize_normalize(
    img: np.ndarray, tables: tuple[Any, ...], order: np.ndarray, mean: np.ndarray, out: np.ndarray
) -> None:
    """Resize ``img [H, W, C]`` uint8 with the taps ``tables`` (rows then columns), reorder the
    channels, subtract ``mean`` and write ``out [3, S_h, S_w]`` float32. Requires :func:`kernels`."""
    k = kernels()
    assert k is not None, "resize_normalize needs the numba kernels"
    k.resize_normalize(img, *tables, order, mean, out)


def warm_up() -> bool:
    """Load (or compile, the first time on a machine) the kernels now rather than on the first
    image; returns whether they are in use."""
    if kernels() is None:
        return False
    top_k_candidates(np.full((1, 2, 2), 0.5, dtype=np.float32), 0.01, 1, 0)
    planes = np.array([[0, 0], [0, 0], [1, 1], [1, 0.9]], dtype=np.float32)
    greedy_nms(planes, np.ones(2, dtype=bool), np.array([0, 2]), 0.5, True)
    # The same array kinds as preprocessing passes (its tap tables are read-only), so that this
    # compiles the specialisation real images use.
    taps = [np.array([0, 1]), np.array([0, 1]), np.ones(2, np.float32), np.zeros(2, np.float32)]
    for a in taps:
        a.flags.writeable = False
    out = np.empty((3, 2, 2), dtype=np.float32)
    resize_normalize(
        np.zeros((2, 2, 3), dtype=np.uint8), (*taps, *taps), np.arange(3), np.zeros(3, np.float32), out
    )
    return True
