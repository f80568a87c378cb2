"""Value ranges of a model's FP32 intermediate tensors, collected with ONNX Runtime on real inputs.

One pass over the calibration images gives, per tensor, its min/max and a histogram of ``|x|``.
That is enough for both consumers: the FP16 range check (is any value near 65504?) and every INT8
calibration method (max, percentile, entropy, MSE), so the images are run once and the statistics
can be cached.

The histogram has a fixed number of bins over ``[0, R)`` with ``R`` a power of two; when a larger
value arrives, ``R`` doubles and adjacent bin pairs merge, which is exact, so a single pass needs no
prior knowledge of the range.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract import INPUT

#: Histogram resolution (TensorRT's legacy entropy calibrator used the same 2048 bins).
BINS = 2048
#: INT8 symmetric quantisation uses levels -127..127.
QMAX = 127
METHODS = ("minmax", "percentile", "entropy", "mse")
#: Bumped whenever a method's arithmetic changes, so cached ranges from older code are not reused.
METHODS_VERSION = 2


@dataclass
class TensorStats:
    """Running statistics of one tensor: extrema, count and a histogram of absolute values."""

    name: str
    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    nonfinite: int = 0
    hist_max: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))

    @property
    def absmax(self) -> float:
        if self.count == 0:
            return 0.0
        return float(max(abs(self.min), abs(self.max)))

    @property
    def bin_width(self) -> float:
        return self.hist_max / BINS

    def update(self, values: np.ndarray) -> None:
        a = np.asarray(values, dtype=np.float32).reshape(-1)
        if a.size == 0:
            return
        finite = np.isfinite(a)
        if not finite.all():
            self.nonfinite += int(a.size - finite.sum())
            a = a[finite]
            if a.size == 0:
                return
        lo, hi = float(a.min()), float(a.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += int(a.size)
        m = max(-lo, hi)
        if self.hist_max == 0.0:
            self.hist_max = 2.0 ** math.ceil(math.log2(max(m, 2.0**-24)))
        while m > self.hist_max:
            # Doubling the range: bin pairs merge exactly, the upper half starts empty.
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(BINS // 2, np.int64)])
            self.hist_max *= 2.0
        # A power-of-two scale makes the bin index exact in float32.
        idx = (np.abs(a) * np.float32(BINS / self.hist_max)).astype(np.int64)
        np.minimum(idx, BINS - 1, out=idx)
        self.hist += np.bincount(idx, minlength=BINS)

    def fraction_above(self, amax: float) -> float:
        """Fraction of values with ``|x| > amax`` (those INT8 saturates), from the histogram."""
        total = int(self.hist.sum())
        if total == 0 or amax >= self.absmax:
            return 0.0
        pos = amax / self.bin_width
        k = int(pos)
        if k >= BINS:
            return 0.0
        above = float(self.hist[k + 1 :].sum()) + float(self.hist[k]) * (1.0 - (pos - k))
        return above / total

    def percentile(self, q: float) -> float:
        """``|x|`` at percentile ``q`` (0..100), to the histogram's resolution, at most ``absmax``."""
        total = self.hist.sum()
        if total == 0:
            return 0.0
        cdf = np.cumsum(self.hist) / total
        k = int(np.searchsorted(cdf, q / 100.0, side="left"))
        return float(min((k + 1) * self.bin_width, self.absmax))

    def to_dict(self) -> dict[str, Any]:
        packed = base64.b64encode(zlib.compress(self.hist.astype("<i8").tobytes(), 6)).decode("ascii")
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "nonfinite": self.nonfinite,
            "hist_max": self.hist_max,
            "hist": packed,
        }

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> TensorStats:
        hist = np.frombuffer(zlib.decompress(base64.b64decode(d["hist"])), dtype="<i8").astype(np.int64)
        if hist.shape != (BINS,):
            raise ValueError(f"histogram of {name} has {hist.size} bins, expected {BINS}")
        return cls(
            name=name,
            count=int(d["count"]),
            min=float(d["min"]),
            max=float(d["max"]),
            nonfinite=int(d.get("nonfinite", 0)),
            hist_max=float(d["hist_max"]),
            hist=hist,
        )


# -- calibration methods: a per-tensor |x| limit (amax) from the statistics -------------------------


def amax_entropy(stats: TensorStats, levels: int = QMAX + 1) -> float:
    """The clipping threshold that minimises KL(P || Q) between the histogram and its INT8 image.

    This is the method of TensorRT's legacy entropy calibrator: for each candidate threshold, fold
    the tail into the last bin (P), merge the bins into ``levels`` quantisation bins and spread
    them back over the non-empty source bins (Q).
    """
    h = stats.hist.astype(np.float64)
    # Exact zeros (half of every post-ReLU tensor) would dominate both distributions and push the
    # threshold down; like NVIDIA's own histogram calibrator, give bin 0 the weight of bin 1.
    h[0] = h[1]
    nz = np.nonzero(h)[0]
    if nz.size == 0:
        return stats.absmax
    last = int(nz[-1]) + 1
    if last <= levels:
        return stats.absmax  # no more source bins than INT8 levels: nothing to gain by clipping
    best_i, best_kl = last, math.inf
    cum_tail = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])  # cum_tail[i] = h[i:].sum()
    for i in range(levels, last + 1):
        p = h[:i].copy()
        p[i - 1] += cum_tail[i]
        used = h[:i] > 0
        edges = (np.arange(levels + 1) * i) // levels
        sums = np.add.reduceat(h[:i], edges[:-1])
        counts = np.add.reduceat(used.astype(np.float64), edges[:-1])
        avg = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        q = np.repeat(avg, np.diff(edges)) * used
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        p /= p_sum
        q /= q_sum
        mask = p > 0
        # A source bin that is empty but receives the folded tail has no mass in Q: smooth it.
        qm = np.maximum(q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(min(best_i * stats.bin_width, stats.absmax))


def amax_mse(stats: TensorStats, candidates: int = 256) -> float:
    """The threshold minimising the expected squared INT8 error (rounding inside, clipping outside)."""
    total = stats.hist.sum()
    if total == 0 or stats.absmax == 0.0:
        return stats.absmax
    centers = (np.arange(BINS) + 0.5) * stats.bin_width
    counts = stats.hist.astype(np.float64)
    amaxes = stats.absmax * np.linspace(1.0 / candidates, 1.0, candidates)
    step = amaxes / QMAX
    clipped = np.maximum(centers[None, :] - amaxes[:, None], 0.0) ** 2
    rounding = np.where(centers[None, :] <= amaxes[:, None], (step[:, None] ** 2) / 12.0, 0.0)
    err = ((clipped + rounding) * counts[None, :]).sum(axis=1)
    return float(amaxes[int(np.argmin(err))])


def compute_amax(stats: TensorStats, method: str, percentile: float = 99.99) -> float:
    """The INT8 range (``|x|`` limit) of one tensor by ``method`` (see :data:`METHODS`)."""
    if method == "minmax":
        return stats.absmax
    if method == "percentile":
        return stats.percentile(percentile)
    if method == "entropy":
        return amax_entropy(stats)
    if method == "mse":
        return amax_mse(stats)
    raise ValueError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")


# -- collection -----------------------------------------------------------------------------------


def collect_stats(
    model: Any,
    batches: Iterable[np.ndarray],
    tensors: Sequence[str],
    *,
    input_name: str = INPUT,
    on_batch: Callable[[int], None] | None = None,
    intra_op_threads: int | None = None,
) -> dict[str, TensorStats]:
    """Run ``model`` (an ``onnx.ModelProto`` in FP32) on ``batches`` and gather :class:`TensorStats`.

    Every tensor in ``tensors`` becomes an extra graph output of a private copy of the model, so ONNX
    Runtime keeps it; the batches are consumed one at a time and only the statistics are kept.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    graph_inputs = {i.name for i in m.graph.input}
    fetch = [t for t in tensors if t not in graph_inputs]
    for t in fetch:
        if t not in existing:
            m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if intra_op_threads:
        opts.intra_op_num_threads = int(intra_op_threads)
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    del m
    stats = {t: TensorStats(t) for t in tensors}
    for x in batches:
        outs = sess.run(fetch, {input_name: x})
        for t, a in zip(fetch, outs):
            stats[t].update(a)
        if input_name in stats:
            stats[input_name].update(x)
        if on_batch is not None:
            on_batch(int(x.shape[0]))
    return stats
