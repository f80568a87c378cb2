"""``--end-to-end`` on ``python -m ssd_deploy.export`` and ``ssd-quantize``; real SSD300 graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from quantize_models import tiny_ssd

from ssd_deploy.cli.quantize import main as quantize_main
from ssd_deploy.config import SSDConfig
from ssd_deploy.contract import CONFIG_KEY, DETECTIONS, END_TO_END_KEY, NUM_DETECTIONS
from ssd_deploy.endtoend import add_end_to_end
from ssd_deploy.postprocess import detect
from tests.test_end_to_end import assert_same_as_numpy
from tests.test_quantize_cli import _write_images

ort = pytest.importorskip("onnxruntime")
_SESSIONS: dict[Path, object] = {}  # the last session only: the SSD300 one is opened once


def _run_all(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    sess = _SESSIONS.get(path) or ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _SESSIONS.clear()
    _SESSIONS[path] = sess
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"images": images})))


def _check_against_numpy(path: Path, images: np.ndarray) -> list[int]:
    """The in-graph Detect equals the numpy Detect on the same run's loc/conf/priors."""
    out = _run_all(path, images)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    config = SSDConfig.from_json(meta[CONFIG_KEY])
    ref = detect(out["loc"], out["conf"], out["priors"], config.variances, config.detect)
    assert_same_as_numpy(out[DETECTIONS], out[NUM_DETECTIONS], ref)
    return [len(r) for r in ref]


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    onnx.save(tiny_ssd(), str(tmp_path / "tiny.onnx"))
    _write_images(tmp_path / "calib", 2)
    return tmp_path


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_quantize_end_to_end_equals_numpy_detect(work, capsys, precision):
    rc = quantize_main(["--onnx", str(work / "tiny.onnx"), "--precision", precision, "--calib-images",
                        str(work / "calib"), "--no-cache", "--no-verify", "--end-to-end"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    dst = work / f"tiny_{precision}.onnx"
    assert "end-to-end: detections" in out.out
    m = onnx.load(str(dst))
    assert json.loads({p.key: p.value for p in m.metadata_props}[END_TO_END_KEY])["top_k"] == 200
    if precision == "int8":
        assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        images = rng.normal(0, 60, (batch, 3, 300, 300)).astype(np.float32)
        counts = _check_against_numpy(dst, images)
        assert max(counts) > 0


def test_quantize_end_to_end_refuses_an_end_to_end_input(work, capsys):
    add_end_to_end(work / "tiny.onnx", work / "e2e.onnx")
    before = {p.name for p in work.iterdir()}
    rc = quantize_main(["--onnx", str(work / "e2e.onnx"), "--precision", "int8", "--calib-images",
                        str(work / "calib"), "--end-to-end"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "already has the end-to-end outputs" in err and len(err.strip().splitlines()) == 1
    assert {p.name for p in work.iterdir()} == before


def test_export_end_to_end_over_the_limit_is_exit_2_before_tracing(tmp_path, capsys):
    pytest.importorskip("torch")
    from ssd_deploy.cli.export import main as export_main

    out = tmp_path / "big.onnx"
    rc = export_main(["--num-classes", "400", "--config", "coco", "--end-to-end", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "D <= 65536" in err and "399 classes" in err and str(out) in err
    assert not out.exists()


def test_real_ssd300_end_to_end_on_photos(ssd300_onnx, sample_paths, voc300, tmp_path):
    """The seeded SSD300 export (FP32) on the sample photos, batch 1 and all of them at once."""
    from ssd_deploy.preprocess import preprocess

    dst = tmp_path / "ssd300_e2e.onnx"
    spec = add_end_to_end(ssd300_onnx, dst)
    assert spec.max_detections == 20 * 200
    batch, _ = preprocess(sample_paths, voc300)
    _check_against_numpy(dst, batch[:1])
    counts = _check_against_numpy(dst, batch)
    assert sum(counts) > 0
