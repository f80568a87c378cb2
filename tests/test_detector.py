"""Detector: dispatch, result layout, thresholds, batching and thread safety."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ssd_deploy.config import preset
from ssd_deploy.priors import prior_boxes
from ssd_deploy.runtime import Backend, BackendError, Detector, ImageDetections
from ssd_deploy.runtime.detector import backend_for


class FakeBackend(Backend):
    """Heads with exactly one confident detection per image: class 12 on the prior nearest the centre,
    with zero offsets, so its box is that prior's box."""

    name = "fake"

    def __init__(self, batch_range=(1, None)):
        self.path = "<fake>"
        self.config = preset("voc300")
        self._range = batch_range
        self.calls: list[int] = []
        pri = prior_boxes(self.config.prior)
        d = np.abs(pri[:, 0] - 0.5) + np.abs(pri[:, 1] - 0.5) + np.abs(pri[:, 2] - 0.3)
        self.hot = int(np.argmin(d))
        self.hot_box = pri[self.hot]

    @property
    def batch_range(self):
        return self._range

    def run(self, images):
        n = images.shape[0]
        self.calls.append(n)
        p, c = self.config.num_priors, self.config.num_classes
        loc = np.zeros((n, p, 4), np.float32)
        conf = np.full((n, p, c), 0.0, np.float32)
        conf[:, :, 0] = 1.0
        conf[:, self.hot, 0] = 0.1
        # images with a bright first pixel get a higher score: lets tests tell images apart
        conf[:, self.hot, 12] = np.where(images[:, 0, 0, 0] > 0, 0.9, 0.6)
        return loc, conf


def _img(h, w, bright):
    a = np.zeros((h, w, 3), np.uint8)
    a[0, 0] = 255 if bright else 0
    return a


def test_single_and_list_results_in_pixels():
    det = Detector(FakeBackend())
    one = det.detect(_img(200, 400, True))
    assert isinstance(one, ImageDetections) and len(one) == 1
    assert one.class_names == ("dog",) and one.class_ids.tolist() == [12]
    assert one.image_size == (400, 200)
    cx, cy, w, h = FakeBackend().hot_box
    want = np.array([(cx - w / 2) * 400, (cy - h / 2) * 200, (cx + w / 2) * 400, (cy + h / 2) * 200])
    np.testing.assert_allclose(one.boxes[0], want, rtol=1e-5)
    many = det.detect([_img(10, 10, True), _img(30, 20, False)])
    assert [round(float(r.scores[0]), 3) for r in many] == [0.9, 0.6]
    assert det.detect([]) == []


def test_thresholds_per_call_and_array():
    det = Detector(FakeBackend())
    assert len(det.detect(_img(50, 50, False), conf_thresh=0.7)) == 0
    assert len(det.detect(_img(50, 50, False))) == 1
    res, arr = det.detect_array([_img(50, 50, True)])
    assert arr.shape == (1, 21, 200, 5)
    assert arr[0, 12, 0, 0] == pytest.approx(0.9) and not arr[0, 0].any() and not arr[0, 12, 1].any()
    d = res[0].to_dict()
    assert d["width"] == 50 and d["detections"][0]["class_name"] == "dog"


def test_static_batch_is_padded_and_chunked():
    fb = FakeBackend(batch_range=(4, 4))
    det = Detector(fb)
    out = det.detect([_img(8, 8, i % 2 == 0) for i in range(6)])
    assert fb.calls == [4, 4] and len(out) == 6
    assert [round(float(r.scores[0]), 1) for r in out] == [0.9, 0.6, 0.9, 0.6, 0.9, 0.6]


def test_timed_stages():
    det = Detector(FakeBackend())
    res, t = det.detect_timed([_img(20, 20, True)])
    assert len(res) == 1
    assert {"preprocess", "compute", "postprocess", "total"} <= t.keys()
    assert t["total"] >= t["postprocess"] >= 0


def test_unknown_artifact_type(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(BackendError, match="unknown artifact type"):
        backend_for(f)


def test_bad_onnx_files(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(BackendError, match="no such file"):
        Detector.load(missing)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(BackendError, match="junk.onnx: ONNX Runtime cannot load it"):
        Detector.load(junk, device="cpu")


def test_onnx_without_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["loc"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 300, 300])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, [1, 3, 300, 300])],
    )
    f = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), f)
    with pytest.raises(BackendError, match="no 'ssd_deploy.config'"):
        Detector.load(f)


def test_onnx_detector_matches_torch_reference(ssd300_onnx, ssd300_model, sample_paths):
    """The whole path on ONNX Runtime: same heads as PyTorch on real photos, same detections."""
    import torch

    det = Detector.load(ssd300_onnx)
    assert det.backend.batch_range == (1, None) and det.config.num_priors == 8732
    from ssd_deploy.preprocess import preprocess

    x, sizes = preprocess(sample_paths[:3], det.config)
    loc, conf = det.infer(x)
    with torch.inference_mode():
        rl, rc = ssd300_model.forward_heads(torch.from_numpy(x))
        rc = torch.softmax(rc, -1)
    np.testing.assert_allclose(loc, rl.numpy(), atol=1e-3)
    np.testing.assert_allclose(conf, rc.numpy(), atol=1e-4)
    res = det.detect(sample_paths[:3])
    assert [r.image_size for r in res] == sizes
    assert all(len(r) > 0 for r in res)


def test_detector_shared_by_threads(ssd300_onnx, sample_paths):
    det = Detector.load(ssd300_onnx)
    images = sample_paths[:4]
    sequential = [det.detect(p) for p in images]
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        return [(j, det.detect(images[j])) for j in ((i + k) % len(images) for k in range(3))]

    with ThreadPoolExecutor(8) as pool:
        outs = [r for chunk in pool.map(work, range(8)) for r in chunk]
    assert len(outs) == 24
    for j, r in outs:
        s = sequential[j]
        assert r.class_ids.tolist() == s.class_ids.tolist()
        np.testing.assert_array_equal(r.scores, s.scores)
        np.testing.assert_array_equal(r.boxes, s.boxes)


def test_provider_resolution():
    from ssd_deploy.runtime.onnxrt.backend import resolve_providers

    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, cpu_only) == ["CPUExecutionProvider"]
    assert resolve_providers(None, gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cpu", gpu) == ["CPUExecutionProvider"]
    assert resolve_providers("tensorrt", gpu)[0] == "TensorrtExecutionProvider"
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        resolve_providers("cuda", cpu_only)
