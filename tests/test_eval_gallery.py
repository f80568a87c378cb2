"""The mismatch gallery: ranking, files, and nothing left behind when writing is interrupted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from eval_synth import random_scenes, write_voc

from ssd_deploy.evaluation import DetectionSet, load_voc
from ssd_deploy.evaluation import gallery as gallery_mod
from ssd_deploy.evaluation.gallery import compare_images, write_gallery


@pytest.fixture()
def case(tmp_path: Path):
    ds = load_voc(write_voc(tmp_path / "voc", random_scenes(6, seed=5, per_image=3)))
    ref, art = [], []
    for i, rec in enumerate(ds.images):
        n = len(rec.labels)
        boxes = rec.boxes - 1.0  # devkit frame -> model frame: exact copies of the ground truth
        ref.append(DetectionSet(np.full(n, i), rec.labels, np.full(n, 0.9), boxes))
        # image i: the artifact misses its first i objects and scores the rest 0.1 lower
        drop = min(i, n)
        m = n - drop
        art.append(DetectionSet(np.full(m, i), rec.labels[drop:], np.full(m, 0.8), boxes[drop:]))
    return ds, DetectionSet.concat(ref), DetectionSet.concat(art)


def test_ranking_by_missing_then_score_delta(case):
    ds, ref, art = case
    diffs = compare_images(ds, ref, art)
    missing = {d.index: d.missing for d in diffs}
    for i, rec in enumerate(ds.images):
        if len(rec.labels):
            assert missing[i] == min(i, len(rec.labels))
    keys = [d.rank_key for d in diffs]
    assert keys == sorted(keys, reverse=True)
    assert all(d.extra == 0 and d.score_delta_max == pytest.approx(0.1) for d in diffs if d.matched)


def test_gallery_files(case, tmp_path):
    ds, ref, art = case
    out = write_gallery(tmp_path / "g", ds, [("a.onnx", art, "ref", ref)], top=3)
    pngs = sorted(p.name for p in out.glob("*.png"))
    html = (out / "index.html").read_text()
    assert len(pngs) == 3 and all(p in html for p in pngs)
    assert "a.onnx" in html and "<table>" in html


def test_interrupted_gallery_leaves_nothing(case, tmp_path, monkeypatch):
    ds, ref, art = case
    calls = []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = gallery_mod._panel
    monkeypatch.setattr(gallery_mod, "_panel", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_gallery(tmp_path / "g", ds, [("a", art, "ref", ref)], top=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]  # no gallery, no temp folder
