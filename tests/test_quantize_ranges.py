"""Range statistics and INT8 calibration methods, checked against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from ssd_deploy.quantize.ranges import BINS, TensorStats, amax_entropy, amax_mse, compute_amax


def _stats(*chunks: np.ndarray) -> TensorStats:
    st = TensorStats("t")
    for c in chunks:
        st.update(c)
    return st


def test_histogram_with_growing_range_equals_one_histogram_of_everything():
    rng = np.random.default_rng(0)
    # Each chunk raises the maximum, forcing the range to double several times mid-stream.
    chunks = [rng.normal(0, s, size=5000).astype(np.float32) for s in (0.01, 0.3, 2.0, 40.0)]
    st = _stats(*chunks)
    allv = np.abs(np.concatenate(chunks))
    expect, _ = np.histogram(allv, bins=BINS, range=(0.0, st.hist_max))
    np.testing.assert_array_equal(st.hist, expect)
    assert st.count == allv.size
    assert st.absmax == pytest.approx(float(allv.max()))
    assert st.min == pytest.approx(float(np.concatenate(chunks).min()))
    assert st.hist_max >= st.absmax and st.hist_max / 2 < st.absmax  # tight power of two


def test_percentile_and_saturation_match_numpy_to_one_bin():
    rng = np.random.default_rng(1)
    x = rng.standard_t(df=3, size=200_000).astype(np.float32)
    st = _stats(x)
    a = np.abs(x)
    for q in (50.0, 99.0, 99.99):
        assert abs(st.percentile(q) - np.percentile(a, q)) <= 1.01 * st.bin_width
    for amax in (0.5, 3.0, 10.0):
        exact = float(np.mean(a > amax))
        assert st.fraction_above(amax) == pytest.approx(exact, abs=2e-3 + 0.05 * exact)
    assert st.fraction_above(st.absmax) == 0.0


def test_methods_behave_as_designed_on_a_long_tail():
    rng = np.random.default_rng(2)
    body = rng.normal(0, 1.0, size=100_000).astype(np.float32)
    outliers = np.array([60.0, -55.0], np.float32)  # two values far outside the body
    st = _stats(body, outliers)
    assert compute_amax(st, "minmax") == pytest.approx(60.0)
    # Percentile and entropy look at the distribution's shape: two values in 100k do not set the range.
    for method in ("percentile", "entropy"):
        amax = compute_amax(st, method)
        assert 2.0 < amax < 15.0, (method, amax)
        assert st.fraction_above(amax) < 1e-3
    with pytest.raises(ValueError, match="unknown calibration method"):
        compute_amax(st, "kl")


def _int8_mse(x: np.ndarray, amax: float) -> float:
    s = amax / 127
    q = np.clip(np.rint(x / s), -127, 127) * s
    return float(np.mean((q - x) ** 2))


@pytest.mark.parametrize("outliers", [[], [60.0, -55.0], [9.0] * 300])
def test_mse_picks_the_range_with_the_least_actual_int8_error(outliers):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1.0, size=100_000), outliers]).astype(np.float32)
    st = _stats(x)
    chosen = amax_mse(st)
    grid = np.linspace(0.05, 1.0, 60) * st.absmax
    best = min(_int8_mse(x, a) for a in grid)
    assert _int8_mse(x, chosen) <= 1.02 * best


def test_entropy_and_mse_do_not_clip_a_uniform_distribution():
    x = np.random.default_rng(3).uniform(-8, 8, size=200_000).astype(np.float32)
    st = _stats(x)
    assert amax_entropy(st) > 0.9 * st.absmax
    assert amax_mse(st) > 0.9 * st.absmax


def test_entropy_ignores_the_zero_spike_of_relu_outputs():
    # Half the values exactly 0 (a ReLU output): the threshold must follow the positive part.
    x = np.maximum(np.random.default_rng(4).normal(0, 1, size=200_000), 0).astype(np.float32)
    st = _stats(x)
    assert amax_entropy(st) > 0.5 * st.absmax


def test_stats_roundtrip_through_json_and_count_nonfinite():
    x = np.array([1.0, -3.0, np.inf, np.nan, 2.5], np.float32)
    st = _stats(x)
    assert st.nonfinite == 2 and st.count == 3 and st.absmax == 3.0
    back = TensorStats.from_dict("t", st.to_dict())
    np.testing.assert_array_equal(back.hist, st.hist)
    assert (back.min, back.max, back.count, back.hist_max, back.nonfinite) == (
        st.min,
        st.max,
        st.count,
        st.hist_max,
        st.nonfinite,
    )
