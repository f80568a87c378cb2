"""ssd-detect and ssd-check end to end, and the matching logic ssd-check relies on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ssd_deploy.check import match_detections
from ssd_deploy.cli import check
from ssd_deploy.cli import detect as detect_cli


def test_match_detections_counts_and_deltas():
    ref_b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float)
    ref_s = np.array([0.9, 0.8, 0.7])
    got_b = np.array([[0.5, 0, 10.5, 10], [21, 20, 31, 30], [100, 100, 110, 110]], float)
    got_s = np.array([0.91, 0.75, 0.6])
    m, miss, extra, sd, bd = match_detections(ref_b, ref_s, got_b, got_s)
    assert (m, miss, extra) == (2, 1, 1)
    np.testing.assert_allclose(sorted(sd), [0.01, 0.05], atol=1e-9)
    assert bd.shape == (2, 4)
    np.testing.assert_allclose(sorted(bd.max(axis=1)), [0.5, 1.0])
    assert match_detections(ref_b, ref_s, got_b[:0], got_s[:0])[:3] == (0, 3, 0)


def test_match_is_one_to_one():
    ref_b = np.array([[0, 0, 10, 10]], float)
    got_b = np.array([[0, 0, 10, 10], [0, 0, 10, 10.2]], float)
    m, miss, extra, _, _ = match_detections(ref_b, np.array([0.5]), got_b, np.array([0.5, 0.49]))
    assert (m, miss, extra) == (1, 0, 1)


@pytest.fixture()
def two_images(tmp_path, sample_paths):
    d = tmp_path / "imgs"
    d.mkdir()
    for p in sample_paths[:2]:
        shutil.copy(p, d / p.name)
    return d


def test_ssd_check_passes_on_fp32_export(ssd300_onnx, two_images, tmp_path, capsys):
    out = tmp_path / "check.json"
    code = check.main(["--engine", str(ssd300_onnx), "--images", str(two_images), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "PASS" in text
    rep = json.loads(out.read_text())
    assert rep["passed"] and rep["precision"] == "fp32" and len(rep["images"]) == 2
    assert rep["detections"]["matched"] == rep["detections"]["reference"] > 0
    assert rep["heads"]["conf"]["max_abs"] < 1e-4


def test_ssd_check_fails_on_a_different_model(ssd300_onnx, two_images, tmp_path, capsys):
    """Checked against another seed's weights, the artifact must fail (exit 1), not pass vacuously."""
    torch = pytest.importorskip("torch")
    from ssd_deploy.config import preset
    from ssd_deploy.export import load_model

    other = tmp_path / "other.pth"
    with pytest.warns(UserWarning):
        torch.save(load_model(None, preset("voc300"), seed=5).state_dict(), other)
    code = check.main(["--engine", str(ssd300_onnx), "--images", str(two_images), "--weights", str(other)])
    text = capsys.readouterr().out
    assert code == 1 and "FAIL" in text


def test_ssd_check_bad_engine(tmp_path, capsys):
    code = check.main(["--engine", str(tmp_path / "missing.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.onnx" in err and len(err.strip().splitlines()) == 1


def test_ssd_detect_writes_json_and_png(ssd300_onnx, two_images, tmp_path, capsys):
    out = tmp_path / "out"
    code = detect_cli.main(
        ["--engine", str(ssd300_onnx), str(two_images), "--output", str(out), "--min-score", "0.5"]
    )
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4 and all(n.endswith((".json", ".png")) for n in names)
    rec = json.loads(next(out.glob("*.json")).read_text())
    assert {"image", "width", "height", "detections"} <= rec.keys()
    assert all(d["score"] >= 0.5 for d in rec["detections"])
    from PIL import Image

    png = out / (rec["image"].rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".png")
    with Image.open(png) as im:
        assert im.size == (rec["width"], rec["height"])
    assert (png.stat().st_mode & 0o777) != 0o600  # artifacts get the usual mode, not mkstemp's


def test_ssd_detect_bad_image(ssd300_onnx, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture")
    code = detect_cli.main(["--engine", str(ssd300_onnx), str(bad), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "notes.jpg" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_samples_missing_is_a_one_line_error(monkeypatch, capsys, tmp_path, ssd300_onnx):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a)
    )
    code = detect_cli.main(["--engine", str(tmp_path / "x.onnx"), "--samples"])
    err = capsys.readouterr().err
    assert code == 2 and "scikit-image" in err and len(err.strip().splitlines()) == 1
    code = check.main(["--engine", str(ssd300_onnx)])
    err = capsys.readouterr().err
    assert code == 2 and "scikit-image" in err and len(err.strip().splitlines()) == 1
