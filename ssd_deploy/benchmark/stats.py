"""Latency statistics with trtexec's definitions, plus paired ratios for interleaved comparisons.

trtexec (TensorRT's ``sampleReporting.cpp``) sorts the timings ascending and defines

* median: the middle value, or the mean of the two middle values for an even count;
* percentile p: with ``n`` values and ``exclude = int((1 - p/100) * n)`` evaluated in single
  precision, the value at index ``max(n - 1 - exclude, 0)``. A consequence worth knowing: the
  p99 of 100 samples is the maximum (``(1 - 0.99f) * 100`` truncates to 0);
* coefficient of variation: population standard deviation over the mean, in percent.

These are reproduced exactly so numbers from ``ssd-bench`` and ``trtexec`` mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Percentiles reported next to min/mean/median/max (trtexec's default set).
PERCENTILES: tuple[float, ...] = (90.0, 95.0, 99.0)


def _sorted(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(values, dtype=np.float64).ravel())


def trt_percentile(values: Sequence[float] | np.ndarray, p: float) -> float:
    """trtexec's percentile of ``values`` (any order); ``inf`` for no values, as trtexec."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    arr = _sorted(values)
    n = arr.size
    if n == 0:
        return math.inf
    # Single precision on purpose: trtexec computes (1 - p / 100) * n in float, and double
    # precision would pick a different element (e.g. p90 of 10 values).
    f32 = np.float32
    exclude = int((f32(1.0) - f32(p) / f32(100.0)) * f32(n))
    return float(arr[max(n - 1 - exclude, 0)])


def trt_median(values: Sequence[float] | np.ndarray) -> float:
    """Middle value, or the mean of the two middle values for an even count; ``inf`` for none."""
    arr = _sorted(values)
    n = arr.size
    if n == 0:
        return math.inf
    m = n // 2
    return float(arr[m]) if n % 2 else float((arr[m - 1] + arr[m]) / 2.0)


def coefficient_of_variation(values: Sequence[float] | np.ndarray) -> float:
    """Population standard deviation over the mean, in percent (trtexec's "coefficient of variance")."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        return 0.0
    mean = float(arr.mean())
    if mean == 0.0:
        # All zeros (a stage this backend does not have) do not vary; otherwise undefined, as in trtexec.
        return 0.0 if not arr.any() else math.inf
    return float(np.sqrt(np.mean((arr - mean) ** 2)) / mean * 100.0)


@dataclass(frozen=True)
class Summary:
    """Distribution of one timing (milliseconds unless the caller scaled otherwise)."""

    n: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    cv_pct: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(values: Sequence[float] | np.ndarray, scale: float = 1.0) -> Summary:
    """min/mean/median/p90/p95/p99/max, population std and CV of ``values * scale``."""
    arr = np.asarray(values, dtype=np.float64).ravel() * scale
    if arr.size == 0:
        raise ValueError("no values to summarize")
    p90, p95, p99 = (trt_percentile(arr, p) for p in PERCENTILES)
    return Summary(
        n=int(arr.size), min=float(arr.min()), mean=float(arr.mean()), median=trt_median(arr),
        p90=p90, p95=p95, p99=p99, max=float(arr.max()), std=float(arr.std()),
        cv_pct=coefficient_of_variation(arr),
    )  # fmt: skip


@dataclass(frozen=True)
class PairedRatio:
    """Median of per-round ratios with a bootstrap confidence interval."""

    median: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_ratio(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedRatio:
    """Median of ``numerator[i] / denominator[i]`` over rounds, with a percentile-bootstrap CI.

    Interleaved rounds see the same background load, so the per-round ratio cancels most of the
    machine's drift; its median is what a comparison on a shared machine should quote.
    """
    num = np.asarray(numerator, dtype=np.float64).ravel()
    den = np.asarray(denominator, dtype=np.float64).ravel()
    if num.shape != den.shape or num.size == 0:
        raise ValueError(
            f"paired_ratio needs two equal-length non-empty series, got {num.size} and {den.size}"
        )
    if np.any(den <= 0) or np.any(num <= 0):
        raise ValueError("paired_ratio needs positive values")
    ratios = num / den
    med = float(np.median(ratios))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ratios.size, size=(resamples, ratios.size))
    boot = np.median(ratios[idx], axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return PairedRatio(median=med, low=float(low), high=float(high), n=int(ratios.size))
