"""The end-to-end graph on OpenVINO (read_model/compile_model directly): where it equals the numpy
Detect and where it does not (docs/end_to_end.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssd_deploy.config import DetectParams, SSDConfig
from ssd_deploy.contract import CONFIG_KEY, DETECTIONS, NUM_DETECTIONS
from ssd_deploy.endtoend import add_end_to_end
from ssd_deploy.postprocess import detect
from tests.test_end_to_end import assert_same_as_numpy, passthrough_model, random_priors, softmax

ov = pytest.importorskip("openvino")


def ov_run(
    path: Path, feeds: dict[str, np.ndarray], outputs=(DETECTIONS, NUM_DETECTIONS)
) -> list[np.ndarray]:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU")
    res = compiled(feeds)
    return [res[compiled.output(name)] for name in outputs]


def as_set(dets: np.ndarray, num: np.ndarray, i: int) -> list[tuple]:
    rows = dets[i, : num[i]]
    return sorted(
        zip(rows[:, 5].astype(int).tolist(), rows[:, 4].tolist(), *np.round(rows[:, :4], 4).T.tolist())
    )


def test_continuous_scores_equal_numpy(tmp_path):
    rng = np.random.default_rng(0)
    p, c = 1000, 21
    params = DetectParams(conf_thresh=0.05, nms_thresh=0.45, top_k=40)
    priors = random_priors(rng, p)
    add_end_to_end(passthrough_model(tmp_path / "m.onnx", priors, c, params), tmp_path / "e2e.onnx")
    loc = rng.normal(0, 1, (3, p, 4)).astype(np.float32)
    conf = softmax(rng.normal(0, 2, (3, p, c)))
    dets, num = ov_run(tmp_path / "e2e.onnx", {"loc_in": loc, "conf_in": conf})
    assert num.dtype == np.int32
    assert_same_as_numpy(dets, num, detect(loc, conf, priors, (0.1, 0.2), params))


def _pairs_model(tmp_path: Path, tie_margin: int) -> tuple[Path, np.ndarray, DetectParams]:
    p = 50
    cx = np.repeat(np.linspace(0.05, 0.95, p // 2), 2)
    cx[1::2] += 0.01
    priors = np.stack([cx, np.full(p, 0.5), np.full(p, 0.05), np.full(p, 0.05)], 1).astype(np.float32)
    params = DetectParams(conf_thresh=0.01, nms_thresh=0.45, top_k=10)
    out = tmp_path / f"pairs_{tie_margin}.onnx"
    add_end_to_end(passthrough_model(tmp_path / "m.onnx", priors, 2, params), out, tie_margin=tie_margin)
    return out, priors, params


def test_equal_scores_exact_with_the_tie_margin(tmp_path):
    """50 equal scores, top_k 10: the (score, prior index) ranking of 32 extra candidates makes
    OpenVINO pick and order priors 0..9 as the numpy Detect does."""
    path, priors, params = _pairs_model(tmp_path, 32)
    loc = np.zeros((1, 50, 4), np.float32)
    conf = np.full((1, 50, 2), 0.5, np.float32)
    dets, num = ov_run(path, {"loc_in": loc, "conf_in": conf})
    assert_same_as_numpy(dets, num, detect(loc, conf, priors, (0.1, 0.2), params))


def test_iou_equal_to_threshold_suppresses_on_openvino(tmp_path):
    """Documented difference, measured on OpenVINO 2026.4 CPU: IoU exactly equal to the threshold
    suppresses there (the numpy Detect and ONNX Runtime suppress only IoU > threshold)."""
    priors = np.array([[0.5, 0.5, 1.0, 1.0], [0.5, 1.0, 1.0, 2.0], [0.5, 1.0, 1.0, 1.8]], np.float32)
    params = DetectParams(conf_thresh=0.01, nms_thresh=0.5, top_k=10)
    add_end_to_end(passthrough_model(tmp_path / "m.onnx", priors, 2, params), tmp_path / "e2e.onnx")
    loc = np.zeros((1, 3, 4), np.float32)
    conf = np.array([[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]], np.float32)
    dets, num = ov_run(tmp_path / "e2e.onnx", {"loc_in": loc, "conf_in": conf})
    ref = detect(loc, conf, priors, (0.1, 0.2), params)[0]
    np.testing.assert_array_equal(ref.scores, np.float32([0.9, 0.8]))  # box 2: IoU == 0.5 with box 1, kept
    # OpenVINO drops box 2, so box 3 (IoU 0.9 with box 2, 0.47 with box 1) survives instead.
    assert int(num[0]) == 2
    np.testing.assert_array_equal(dets[0, :2, 4], np.float32([0.9, 0.7]))


def test_real_ssd300_on_photos(ssd300_onnx, sample_paths, voc300, tmp_path):
    """The seeded SSD300 export on the sample photos: same detections as the numpy Detect run on
    OpenVINO's own loc/conf (scores within 1e-6, boxes within 1e-5)."""
    import onnx

    from ssd_deploy.preprocess import preprocess

    dst = tmp_path / "e2e.onnx"
    add_end_to_end(ssd300_onnx, dst)
    meta = {p.key: p.value for p in onnx.load(str(dst), load_external_data=False).metadata_props}
    config = SSDConfig.from_json(meta[CONFIG_KEY])
    batch, _ = preprocess(sample_paths[:2], voc300)
    loc, conf, priors, dets, num = ov_run(
        dst, {"images": batch}, ("loc", "conf", "priors", DETECTIONS, NUM_DETECTIONS)
    )
    ref = detect(loc, conf, priors, config.variances, config.detect)
    assert_same_as_numpy(dets, num, ref)


def test_int8_graph_from_ssd_quantize(tmp_path, capsys):
    """An INT8 (Q/DQ) end-to-end graph from ssd-quantize on OpenVINO, batch 1 and 3."""
    import onnx
    from quantize_models import tiny_ssd

    from ssd_deploy.cli.quantize import main as quantize_main
    from tests.test_quantize_cli import _write_images

    onnx.save(tiny_ssd(), str(tmp_path / "tiny.onnx"))
    _write_images(tmp_path / "calib", 2)
    args = ["--onnx", str(tmp_path / "tiny.onnx"), "--precision", "int8",
            "--calib-images", str(tmp_path / "calib"), "--no-cache", "--no-verify",
            "--end-to-end"]  # fmt: skip
    assert quantize_main(args) == 0, capsys.readouterr().err
    dst = tmp_path / "tiny_int8.onnx"
    meta = {p.key: p.value for p in onnx.load(str(dst)).metadata_props}
    config = SSDConfig.from_json(meta[CONFIG_KEY])
    rng = np.random.default_rng(0)
    names = ("loc", "conf", "priors", DETECTIONS, NUM_DETECTIONS)
    for batch in (1, 3):
        images = rng.normal(0, 60, (batch, 3, 300, 300)).astype(np.float32)
        loc, conf, priors, dets, num = ov_run(dst, {"images": images}, names)
        ref = detect(loc, conf, priors, config.variances, config.detect)
        assert sum(len(r) for r in ref) > 0
        assert_same_as_numpy(dets, num, ref)
