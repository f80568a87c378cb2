"""ssd_deploy.ops.jit: the numba kernels give the numpy path's results bit for bit, on random and
adversarial inputs (ties, NaN, inf, empty groups, thresholds at the edges), and the numpy path is
what runs when numba is off."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ssd_deploy.config import DetectParams, preset
from ssd_deploy.ops import jit
from ssd_deploy.ops.boxes import nms, nms_keep, nms_keep_planes
from ssd_deploy.postprocess import _candidates, detect, detect_array
from ssd_deploy.preprocess import preprocess
from ssd_deploy.priors import prior_boxes

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(jit.kernels() is None, reason=f"numba kernels unavailable: {jit.status()}")


def both(fn, *args, **kwargs):
    """``fn`` on the kernels, then on the numpy path."""
    got = fn(*args, **kwargs)
    with jit.disabled():
        want = fn(*args, **kwargs)
    return got, want


def random_boxes(rng: np.random.Generator, n: int, k: int, dtype=np.float32) -> np.ndarray:
    xy = rng.random((n, k, 2)) * rng.choice([1.0, 0.1])
    wh = rng.random((n, k, 2)) * rng.choice([0.5, 0.05, 0.0])
    boxes = np.concatenate([xy, xy + wh], -1)
    if rng.random() < 0.4:  # a coarse grid: equal boxes and IoUs exactly at round thresholds
        boxes = np.round(boxes * 8) / 8
    if rng.random() < 0.3:
        boxes[rng.random(boxes.shape) < 0.05] = rng.choice([np.nan, np.inf, -np.inf])
    return boxes.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nms_equals_numpy(dtype) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, k = int(rng.integers(1, 5)), int(rng.integers(1, 40))
        boxes = random_boxes(rng, n, k, dtype)
        valid = rng.random((n, k)) < 0.9
        for t in (0.0, 0.3, 0.45, 0.5, 1.0, float(rng.random())):
            for nan_suppresses in (True, False):
                with np.errstate(all="ignore"):
                    got, want = both(nms_keep, boxes, valid, t, nan_suppresses)
                np.testing.assert_array_equal(got, want, err_msg=f"t={t} nan_suppresses={nan_suppresses}")


def random_conf(rng: np.random.Generator) -> np.ndarray:
    b, p, c = int(rng.integers(1, 3)), int(rng.integers(1, 400)), int(rng.integers(1, 6))
    conf = rng.random((b, p, c))
    if rng.random() < 0.5:  # quantised scores: many ties, and crowded histogram bins
        conf = np.round(conf * rng.integers(1, 30)) / 30
    if rng.random() < 0.2:
        conf[rng.random(conf.shape) < 0.1] = np.nan
    if rng.random() < 0.1:
        conf[rng.random(conf.shape) < 0.05] = np.inf
    return conf.astype(np.float32)


def test_top_k_candidates_equal_numpy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        conf = random_conf(rng)
        for params in (
            DetectParams(
                conf_thresh=float(rng.choice([0.0, -0.0, 0.01, 0.5, 1.0])), top_k=int(rng.choice([1, 3, 50]))
            ),
            DetectParams(top_k=10000, background_label=-1),
            DetectParams(top_k=2, background_label=conf.shape[2] - 1),
        ):
            got, want = both(_candidates, conf, params)
            for g, w, name in zip(got, want, ("group", "prior", "score", "rank")):
                np.testing.assert_array_equal(g, w, err_msg=f"{name}, {params}")


def test_crowded_class_with_nan_keeps_the_best_finite_scores() -> None:
    # The numpy path's exact fallback once took NaN as the largest score and lost every candidate.
    conf = np.full((1, 64, 2), 0.5, np.float32)
    conf[0, ::2, 1] = np.nan
    conf[0, 7, 1], conf[0, 9, 1] = 0.9, 0.8
    for run in (lambda: _candidates(conf, DetectParams(top_k=2)),):
        got, want = both(run)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        _, prior, score, _ = got
        np.testing.assert_array_equal(prior, [7, 9])
        np.testing.assert_array_equal(score, np.float32([0.9, 0.8]))


def test_full_detect_equals_numpy() -> None:
    rng = np.random.default_rng(2)
    priors = prior_boxes(preset("voc300").prior)
    p = priors.shape[0]
    for trial in range(6):
        b = 1 + trial % 3
        logits = rng.normal(0, 2, (b, p, 21)).astype(np.float32)
        conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        loc = rng.normal(0, 1, (b, p, 4)).astype(np.float32)
        for params in (
            DetectParams(),
            DetectParams(conf_thresh=0.2, top_k=50, keep_top_k=100),
            DetectParams(clip_boxes=True, wh_clamp=4.135, nms_nan_suppresses=False),
        ):
            got, want = both(detect_array, loc, conf.astype(np.float32), priors, params=params)
            np.testing.assert_array_equal(got, want)
            got_l, want_l = both(detect, loc, conf.astype(np.float32), priors, params=params)
            for g, w in zip(got_l, want_l):
                np.testing.assert_array_equal(g.boxes, w.boxes)
                np.testing.assert_array_equal(g.scores, w.scores)
                np.testing.assert_array_equal(g.class_ids, w.class_ids)


@pytest.mark.parametrize("config", ["voc300", "voc512"])
def test_preprocess_equals_numpy(config) -> None:
    cfg = preset(config)
    bgr = cfg.replace(channel_order="BGR", mean=(104.0, 117.0, 123.0))
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        for shape in [(512, 512), (480, 640), (37, 53), (1, 1), (2, 1), (1080, 1920), (300, 300), (700, 200)]
    ]
    strided = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)[:, ::2, :3]  # not contiguous
    readonly = images[1].copy()
    readonly.flags.writeable = False
    images += [strided, readonly, rng.integers(0, 256, (40, 30), dtype=np.uint8)]
    for c in (cfg, bgr):
        (got, got_sizes), (want, want_sizes) = both(preprocess, images, c)
        np.testing.assert_array_equal(got, want)
        assert got_sizes == want_sizes


def test_kernels_release_the_gil_and_agree_across_threads() -> None:
    rng = np.random.default_rng(4)
    priors = prior_boxes(preset("voc300").prior)
    heads = [
        (
            rng.normal(0, 1, (1, priors.shape[0], 4)).astype(np.float32),
            rng.dirichlet(np.ones(21), (1, priors.shape[0])).astype(np.float32),
        )
        for _ in range(4)
    ]
    want = [detect_array(loc, conf, priors) for loc, conf in heads]
    results: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        results[i] = [detect_array(*heads[i], priors) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(heads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, w in enumerate(want):
        for got in results[i]:
            np.testing.assert_array_equal(got, w)


def test_env_switch_selects_the_numpy_path() -> None:
    code = (
        "from ssd_deploy.ops import jit; from ssd_deploy.runtime.detector import Detector; "
        "print(jit.kernels() is None, jit.status())"
    )
    env = dict(os.environ, SSD_DEPLOY_JIT="0", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True numpy (disabled by SSD_DEPLOY_JIT)"
    assert "numba" in jit.status()


def test_disabled_is_scoped() -> None:
    assert jit.kernels() is not None
    with jit.disabled():
        assert jit.kernels() is None
        with jit.disabled():
            assert jit.kernels() is None
        assert jit.kernels() is None
    assert jit.kernels() is not None


@pytest.mark.parametrize("t", [float("inf"), float("-inf"), float("nan"), 1e39, -0.5])
def test_nms_thresholds_outside_the_unit_interval_agree(t) -> None:
    # The public box functions do not validate the threshold; both paths must still agree (the
    # kernel once derived its 0 from the threshold, so t = inf made its clamps NaN).
    boxes = np.array([[0, 0, 1, 1], [1e30, 1e30, 2e30, 2e30], [0, 0, 1, 1], [0.5, 0.5, 1.5, 1.5]], np.float32)
    with np.errstate(all="ignore"):  # areas of 1e30-sized boxes overflow on purpose
        got, want = both(nms, boxes, np.array([1, 0.5, 0.4, 0.3]), t)
    np.testing.assert_array_equal(got, want)


def test_float16_and_byte_swapped_planes_agree() -> None:
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, 3, 30, np.float64)
    for dtype in (np.float16, np.dtype(">f8"), np.dtype(">f4")):
        planes = np.ascontiguousarray(np.moveaxis(boxes, -1, 0)).astype(dtype)
        with np.errstate(all="ignore"):
            got, want = both(nms_keep_planes, planes, np.ones((3, 30), bool), 0.6)
        np.testing.assert_array_equal(got, want, err_msg=str(dtype))


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_kernel_refuses_negative_or_nan_score_threshold(bad) -> None:
    # Its histogram compares bit patterns from the threshold up: a negative one would index below it.
    conf = np.linspace(-0.4, 0.9, 64, dtype=np.float32).reshape(1, 32, 2)
    with pytest.raises(ValueError, match="conf_thresh"):
        jit.kernels().top_k_candidates(conf, bad, 3, -1)


def test_disabled_in_another_thread_never_breaks_a_running_call() -> None:
    rng = np.random.default_rng(6)
    priors = prior_boxes(preset("voc300").prior)
    loc = rng.normal(0, 1, (1, priors.shape[0], 4)).astype(np.float32)
    conf = rng.dirichlet(np.ones(21), (1, priors.shape[0])).astype(np.float32)
    want = detect_array(loc, conf, priors)
    errors: list[BaseException] = []
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                np.testing.assert_array_equal(detect_array(loc, conf, priors), want)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        for _ in range(300):
            with jit.disabled():
                pass
    finally:
        stop.set()
        worker.join()
    assert not errors, errors[0]


def test_numba_disable_jit_selects_the_numpy_path() -> None:
    code = "from ssd_deploy.ops import jit; print(jit.status())"
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    env.pop("SSD_DEPLOY_JIT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy (NUMBA_DISABLE_JIT is set)"


def test_a_kernel_that_fails_to_compile_falls_back_to_numpy(monkeypatch, caplog) -> None:
    class Broken(jit.Kernels):
        def greedy_nms(self, *args, **kwargs):
            raise RuntimeError("no LLVM today")

    monkeypatch.setattr(jit, "_loaded", Broken(jit.kernels()._k, "0"))
    monkeypatch.setattr(jit, "_tried", True)
    monkeypatch.setattr(jit, "_warm", False)
    monkeypatch.setattr(jit, "_why_not", None)
    assert jit.warm_up() is False
    assert jit.kernels() is None
    assert jit.status() == "numpy (numba failed to compile the kernels (RuntimeError))"
    assert "failed to compile" in caplog.text
