"""The Triton generator writes one model, no Python backend, for an end-to-end artifact."""

from __future__ import annotations

import onnx
import pytest
from quantize_models import tiny_ssd

import ssd_deploy.triton as gen
from ssd_deploy.endtoend import add_end_to_end
from ssd_deploy.triton import RepoOptions, TritonError

pytest.importorskip("onnxruntime")


@pytest.fixture()
def e2e(tmp_path):
    onnx.save(tiny_ssd(), str(tmp_path / "tiny.onnx"))
    spec = add_end_to_end(tmp_path / "tiny.onnx", tmp_path / "tiny_e2e.onnx")
    return tmp_path / "tiny_e2e.onnx", spec


def test_single_model_repository(e2e, tmp_path):
    pytest.importorskip("tritonclient")
    path, spec = e2e
    report = gen.generate(path, tmp_path / "repo", RepoOptions(name="det"), max_batch=4, validate=True)
    assert report.validated and set(report.models) == {"det"}
    model = tmp_path / "repo" / "det"
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.onnx"]
    assert (model / "1" / "model.onnx").read_bytes() == path.read_bytes()
    cfg = gen.parse_config((model / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4 and not cfg.backend
    outs = {o.name: o for o in cfg.output}
    assert list(outs["detections"].dims) == [spec.max_detections, 6]
    assert list(outs["num_detections"].dims) == [1] and list(outs["num_detections"].reshape.shape) == []
    assert [i.name for i in cfg.input] == ["images"]
    # A plain artifact still gets the four-model ensemble.
    plain = gen.generate(tmp_path / "tiny.onnx", tmp_path / "repo2", validate=True)
    assert len(plain.models) == 4


def test_detect_overrides_refused_for_baked_graph(e2e, tmp_path):
    path, _ = e2e
    with pytest.raises(TritonError, match="baked into this end-to-end artifact"):
        gen.generate(path, tmp_path / "repo", RepoOptions(detect_overrides={"conf_thresh": 0.3}))
    assert not (tmp_path / "repo").exists()
