"""ONNX export: I/O contract, dynamic batch, metadata, parity with PyTorch, and bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from ssd_deploy.config import METADATA_KEY, SSDConfig, preset
from ssd_deploy.priors import prior_boxes

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from ssd_deploy import export as ex  # noqa: E402
from ssd_deploy.cli import export as export_cli  # noqa: E402


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_io_contract_and_metadata(ssd300_onnx, voc300):
    m = onnx.load(str(ssd300_onnx))
    assert [i.name for i in m.graph.input] == ["images"]
    assert _dims(m.graph.input[0]) == ["batch", 3, 300, 300]
    outs = {o.name: _dims(o) for o in m.graph.output}
    assert outs == {"loc": ["batch", 8732, 4], "conf": ["batch", 8732, 21], "priors": [8732, 4]}
    meta = {p.key: p.value for p in m.metadata_props}
    assert SSDConfig.from_json(meta[METADATA_KEY]) == voc300
    assert meta[ex.PRECISION_KEY] == "fp32"
    assert json.loads(meta[ex.WEIGHTS_KEY]) == {"source": "seeded-init", "seed": 0}
    onnx.checker.check_model(m, full_check=True)
    # priors leave the graph through a node, not as a bare initializer
    assert "priors" not in {i.name for i in m.graph.initializer}


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_matches_pytorch(ssd300_onnx, ssd300_model, batch):
    rng = np.random.default_rng(batch)
    x = rng.uniform(-120, 130, size=(batch, 3, 300, 300)).astype(np.float32)
    sess = ort.InferenceSession(str(ssd300_onnx), providers=["CPUExecutionProvider"])
    loc, conf, priors = sess.run(["loc", "conf", "priors"], {"images": x})
    with torch.inference_mode():
        rl, rc = ssd300_model.forward_heads(torch.from_numpy(x))
    assert loc.shape == (batch, 8732, 4) and conf.shape == (batch, 8732, 21)
    np.testing.assert_allclose(loc, rl.numpy(), atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(conf, torch.softmax(rc, -1).numpy(), atol=1e-5)
    np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(priors, prior_boxes(preset("voc300").prior))


def test_export_512(tmp_path):
    cfg = preset("voc512")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ex.load_model(None, cfg, seed=1)
    out = tmp_path / "ssd512.onnx"
    rep = ex.export_onnx(model, cfg, out, verify=True, verify_batch=1)
    assert out.is_file() and rep.max_abs_diff["conf"] < 1e-4
    m = onnx.load(str(out), load_external_data=False)
    outs = {o.name: _dims(o) for o in m.graph.output}
    assert outs["loc"] == ["batch", 24564, 4] and outs["priors"] == [24564, 4]


def test_verify_catches_a_wrong_graph(tmp_path, ssd300_model, ssd300_onnx, voc300):
    """The parity check must fail when the file does not compute what PyTorch does."""
    m = onnx.load(str(ssd300_onnx))
    for init in m.graph.initializer:
        if init.dims and list(init.dims)[:1] == [84]:  # the first conf head: perturb its weights
            arr = onnx.numpy_helper.to_array(init).copy() * 1.5
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
            break
    else:
        pytest.fail("no conf head initializer found")
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ex.ExportError, match="conf differs from PyTorch"):
        ex.verify_export(ex.build_export_module(ssd300_model), bad, voc300, batch=1)


# -- CLI and bad input -----------------------------------------------------------------------------
def _cli(args, capsys):
    code = export_cli.main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, _, err = _cli(["--weights", str(tmp_path / "none.pth"), "--output", str(out)], capsys)
    assert code == 2 and "none.pth" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02garbage")
    out = tmp_path / "m.onnx"
    code, _, err = _cli(["--weights", str(bad), "--output", str(out)], capsys)
    assert code == 2 and "bad.pth" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_wrong_class_count(tmp_path, capsys, ssd300_model):
    ck = tmp_path / "voc.pth"
    torch.save(ssd300_model.state_dict(), ck)
    out = tmp_path / "m.onnx"
    code, _, err = _cli(["--weights", str(ck), "--num-classes", "81", "--output", str(out)], capsys)
    assert code == 2 and "21 classes" in err and "81" in err
    assert not out.exists()


def test_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = _cli(["--output", str(blocker / "sub" / "m.onnx"), "--no-verify"], capsys)
    assert code == 2 and "m.onnx" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "x"


def test_failed_export_leaves_nothing(tmp_path, ssd300_model, voc300, monkeypatch):
    def boom(*a, **k):
        raise ex.ExportError("simulated failure in verification")

    monkeypatch.setattr(ex, "verify_export", boom)
    out = tmp_path / "m.onnx"
    with pytest.raises(ex.ExportError, match="simulated"):
        ex.export_onnx(ssd300_model, voc300, out, verify=True)
    assert list(tmp_path.iterdir()) == []
