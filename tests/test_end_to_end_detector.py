"""``Detector`` on end-to-end artifacts: in-graph Detect when it covers the request, numpy otherwise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ssd_deploy.config import DetectParams
from ssd_deploy.endtoend import add_end_to_end
from ssd_deploy.runtime.detector import Detector
from ssd_deploy.runtime.in_graph import in_graph_mismatch

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def e2e_path(ssd300_onnx, tmp_path_factory):
    dst = tmp_path_factory.mktemp("e2e") / "ssd300_e2e.onnx"
    add_end_to_end(ssd300_onnx, dst, params=DetectParams(conf_thresh=0.05, keep_top_k=300))
    return dst


@pytest.fixture(scope="module")
def det(e2e_path):
    with Detector.load(e2e_path, device="cpu") as d:
        yield d


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.class_ids, y.class_ids)
        np.testing.assert_allclose(x.scores, y.scores, rtol=0, atol=1e-6)
        w, h = x.image_size
        np.testing.assert_allclose(x.boxes, y.boxes, rtol=0, atol=1e-5 * max(w, h))


@pytest.fixture(scope="module")
def heads(det, sample_paths):
    """Two photos and the network's loc/conf for them (one run, shared by the tests)."""
    from ssd_deploy.preprocess import preprocess

    paths = sample_paths[:2]
    batch, sizes = preprocess(paths, det.config)
    loc, conf = det.infer(batch)
    return paths, sizes, loc, conf


@pytest.mark.parametrize(
    "changes", [{}, {"conf_thresh": 0.2}, {"keep_top_k": 25}, {"conf_thresh": 0.07, "keep_top_k": 3}]
)
def test_in_graph_when_the_request_is_stricter(det, heads, changes):
    paths, sizes, loc, conf = heads
    params = det.params_for(**changes)
    assert det.in_graph(params)
    ref = det.postprocess(loc, conf, sizes, params)  # the numpy Detect on the same loc/conf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        if changes:
            got, timings = det.detect_timed(paths, **changes)
            assert timings["postprocess"] < timings["compute"]
            _same(got, ref)
        else:  # a single image and the classic array come from the graph too
            (one,), arr = det.detect_array([paths[0]])
            _same([one], ref[:1])
            assert arr.shape == (1, 21, 200, 5) and np.count_nonzero(arr[0, :, :, 0]) == len(ref[0])


def test_looser_request_falls_back_to_numpy_and_says_so_once(e2e_path, heads):
    paths, sizes, loc, conf = heads
    with Detector.load(e2e_path, device="cpu") as d:
        assert d.end_to_end is not None and d.params.conf_thresh == 0.05
        for changes in ({"conf_thresh": 0.01}, {"nms_thresh": 0.5}, {"top_k": 100}, {"keep_top_k": None}):
            assert in_graph_mismatch(d.end_to_end, d.params_for(**changes), d.config.num_priors)
        params = d.params_for(conf_thresh=0.02, nms_thresh=0.5)
        with pytest.warns(RuntimeWarning, match="numpy Detect on loc/conf"):
            got = d.detect(paths, conf_thresh=0.02, nms_thresh=0.5)
        _same(got, d.postprocess(loc, conf, sizes, params))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once only
            assert not d.in_graph(params)


def test_plain_artifact_is_untouched(ssd300_onnx):
    with Detector.load(ssd300_onnx, device="cpu") as d:
        assert d.end_to_end is None and not d.in_graph()


def test_openvino_backend_reads_the_graphs_detections(e2e_path, sample_paths):
    """OpenVINO runs the same file's Detect in the graph; on photos it equals the numpy Detect on
    OpenVINO's own loc/conf (its tie and IoU == threshold corners: docs/end_to_end.md)."""
    pytest.importorskip("openvino")
    from ssd_deploy.preprocess import preprocess

    with Detector.load(e2e_path, device="openvino") as d:
        assert d.backend.name == "openvino" and d.end_to_end is not None and d.in_graph()
        paths = sample_paths[:2]
        batch, sizes = preprocess(paths, d.config)
        loc, conf = d.infer(batch)
        got, timings = d.detect_timed(paths)
        _same(got, d.postprocess(loc, conf, sizes))
        assert timings["postprocess"] < timings["compute"]
