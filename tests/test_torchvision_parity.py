"""A torchvision ``ssd300_vgg16`` checkpoint gives torchvision's own detections, end to end.

torchvision cannot be imported in the main environment (0.28 needs a torch other than the pinned
CPU 2.13), so its outputs were recorded by ``tests/reference/torchvision_reference.py`` in a
separate environment (``make tv-reference``) into ``tests/data/torchvision_ssd300_reference.npz``.
The weights and images are rebuilt here from the same numpy seed (``tests/reference/tv_weights.py``,
pinned by digests in the .npz), saved as a ``.pth`` under torchvision's key names, exported with
``--weights`` alone and run through ``Detector``. ``test_live_torchvision`` reruns torchvision itself
when the cached reference environment exists.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch not installed (export extra)")  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "data" / "torchvision_ssd300_reference.npz"
SCRIPT = ROOT / "tests" / "reference" / "torchvision_reference.py"
TVREF_PYTHON = (
    Path(os.environ.get("SSD_DEPLOY_TVREF", Path.home() / ".cache" / "ssd_deploy" / "tvref"))
    / "bin"
    / "python"
)

#: Bounds on every image, 300 x 300 and larger non-square ones alike (torchvision resizes those
#: with bilinear interpolation, align_corners=False, no antialias: the same taps and weights as our
#: resize). Measured on this machine: scores 9.5e-7 / boxes 0.00021 px at 300 x 300, 5.6e-6 /
#: 0.0014 px on 640 x 480 (docs/checkpoints.md).
SCORE_TOL = 1e-4
BOX_TOL_PX = 0.05


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "tv_weights", ROOT / "tests" / "reference" / "tv_weights.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tv_weights = _load_generator()


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


def match_sets(want: tuple, got: tuple, score_tol: float = SCORE_TOL) -> tuple[int, float, float]:
    """Pair two detection sets ``(boxes, scores, labels)`` one to one per label, closest boxes
    first among pairs whose scores agree within ``score_tol``.

    Returns ``(unpaired, max score delta, max box delta)`` over the pairs; sets are equal within
    the tolerances when ``unpaired == 0`` and the same count.
    """
    wb, ws, wl = want
    gb, gs, gl = got
    unpaired, max_s, max_b = 0, 0.0, 0.0
    for label in np.union1d(wl, gl):
        wi, gi = np.flatnonzero(wl == label), np.flatnonzero(gl == label)
        cost = np.abs(wb[wi, None, :].astype(np.float64) - gb[None, gi, :]).max(axis=2)
        sdiff = np.abs(ws[wi, None].astype(np.float64) - gs[None, gi])
        cost[sdiff > score_tol] = np.inf
        used_w, used_g = set(), set()
        for flat in np.argsort(cost, axis=None, kind="stable"):
            r, c = divmod(int(flat), len(gi))
            if not np.isfinite(cost[r, c]):
                break
            if r in used_w or c in used_g:
                continue
            used_w.add(r)
            used_g.add(c)
            max_s, max_b = max(max_s, float(sdiff[r, c])), max(max_b, float(cost[r, c]))
        unpaired += (len(wi) - len(used_w)) + (len(gi) - len(used_g))
    return unpaired, max_s, max_b


def _expect_equal(ref: dict, key: str, got: tuple, box_tol: float = BOX_TOL_PX) -> tuple[float, float]:
    want = (ref[f"boxes_{key}"], ref[f"scores_{key}"], ref[f"labels_{key}"])
    assert len(got[1]) == len(want[1]), f"{key}: {len(got[1])} detections, torchvision {len(want[1])}"
    unpaired, ds, db = match_sets(want, got)
    assert unpaired == 0, f"{key}: {unpaired} detections without a partner (score delta <= {SCORE_TOL})"
    assert ds <= SCORE_TOL and db <= box_tol, f"{key}: score delta {ds:.3g}, box delta {db:.3g} px"
    return ds, db


def test_generator_reproduces_the_recorded_inputs(reference):
    # If numpy ever changed these streams the recorded outputs would no longer apply: say so here.
    assert tv_weights.digest(tv_weights.state_dict()) == str(reference["weights_digest"])
    assert tv_weights.digest(tv_weights.images()) == str(reference["images_digest"])
    assert tv_weights.digest(list(tv_weights.synthetic_heads())) == str(reference["heads_digest"])
    assert str(reference["torchvision_version"]).startswith("0.29.1")


# -- the post-process alone: numpy runtime and torch reference Detect vs torchvision ------------------
def _synthetic_inputs():
    from ssd_deploy.config import make_config
    from ssd_deploy.priors import prior_boxes

    cfg = make_config(300, "coco", 91, prior="coco300", clip_priors="wh")
    loc, logits = tv_weights.synthetic_heads()
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return loc, (e / e.sum(-1, keepdims=True)).astype(np.float32), prior_boxes(cfg.prior), cfg.variances


def _torchvision_detect():
    from ssd_deploy.config import DetectParams

    # The values config_for_checkpoint records (ssd_deploy.model.checkpoint imports torch).
    return DetectParams(
        top_k=400,
        keep_top_k=200,
        clip_boxes=True,
        wh_clamp=float(np.log(1000 / 16)),
        nms_nan_suppresses=False,
    )


def test_numpy_postprocess_equals_torchvision(reference):
    from ssd_deploy.postprocess import detect

    loc, conf, priors, var = _synthetic_inputs()
    params = _torchvision_detect()
    for b, d in enumerate(detect(loc, conf, priors, var, params)):
        want = (reference[f"syn_boxes_{b}"], reference[f"syn_scores_{b}"], reference[f"syn_labels_{b}"])
        assert len(d) == len(want[1]) == 200
        unpaired, ds, db = match_sets(want, (d.boxes * 300, d.scores, d.class_ids))
        assert unpaired == 0 and ds <= SCORE_TOL and db <= BOX_TOL_PX, (unpaired, ds, db)
    # Each torchvision rule matters on these heads: ssd.pytorch's variant of any one differs.
    for change in ({"clip_boxes": False}, {"wh_clamp": None}, {"nms_nan_suppresses": True}):
        d = detect(loc, conf, priors, var, dataclasses.replace(params, **change))[0]
        want = (reference["syn_boxes_0"], reference["syn_scores_0"], reference["syn_labels_0"])
        unpaired, _, db = match_sets(want, (d.boxes * 300, d.scores, d.class_ids))
        assert unpaired > 0 or db > 1.0, change


@needs_torch
def test_torch_reference_detect_equals_torchvision(reference):
    import torch

    from ssd_deploy.model.detect import detect_reference

    loc, conf, priors, var = _synthetic_inputs()
    out = detect_reference(torch.from_numpy(loc[:1]), torch.from_numpy(conf[:1]), torch.from_numpy(priors),
                           var, _torchvision_detect()).numpy()[0]  # fmt: skip
    cls, rank = np.nonzero(out[:, :, 0] > 0)
    rows = out[cls, rank]
    want = (reference["syn_boxes_0"], reference["syn_scores_0"], reference["syn_labels_0"])
    unpaired, ds, db = match_sets(want, (rows[:, 1:] * 300, rows[:, 0], cls))
    assert len(rows) == 200 and unpaired == 0 and ds <= SCORE_TOL and db <= BOX_TOL_PX, (unpaired, ds, db)


# -- end to end: torchvision .pth -> export CLI -> Detector -----------------------------------------
@pytest.fixture(scope="module")
def tv_pth(tmp_path_factory):
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("tv") / "tv.pth"
    torch.save({k: torch.from_numpy(v) for k, v in tv_weights.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def tv_onnx(tv_pth):
    from ssd_deploy.cli.export import main

    out = tv_pth.parent / "tv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--weights", str(tv_pth), "--output", str(out)]) == 0
    return out


@needs_torch
def test_export_records_torchvision_semantics(tv_onnx):
    import onnx

    from ssd_deploy.config import METADATA_KEY, SSDConfig

    meta = {p.key: p.value for p in onnx.load(str(tv_onnx), load_external_data=False).metadata_props}
    cfg = SSDConfig.from_json(meta[METADATA_KEY])
    assert cfg.num_classes == 91 and cfg.prior.name == "coco300" and cfg.prior.clip == "wh"
    assert cfg.class_names[12] == "N/A" and cfg.class_names[13] == "stop sign"
    assert cfg.mean == (122.99925, 116.9991, 103.9992) and cfg.channel_order == "RGB"
    d = cfg.detect
    assert (d.conf_thresh, d.nms_thresh, d.top_k, d.keep_top_k) == (0.01, 0.45, 400, 200)
    assert d.clip_boxes and d.wh_clamp == pytest.approx(np.log(1000 / 16)) and not d.nms_nan_suppresses


@needs_torch
def test_detector_equals_torchvision(tv_onnx, reference):
    from ssd_deploy.runtime import Detector

    imgs = tv_weights.images()
    with Detector.load(tv_onnx, device="cpu") as det:
        results = det.detect(imgs)  # default parameters: the artifact's own
    for i, (img, r) in enumerate(zip(imgs, results)):
        assert r.image_size == (img.shape[1], img.shape[0])
        _expect_equal(reference, str(i), (r.boxes, r.scores, r.class_ids))
        names = np.asarray(r.class_names)
        assert np.array_equal(names, np.asarray(det.config.class_names, dtype=object)[r.class_ids])


@needs_torch
def test_pytorch_backend_equals_torchvision(tv_pth, reference):
    from ssd_deploy.runtime import Detector

    with Detector.load(tv_pth) as det:  # the PyTorch backend reads the same config from the file
        assert det.params.keep_top_k == 200 and det.params.clip_boxes
        imgs = tv_weights.images()
        for i in (0, 2):  # one at the network size, one resized
            r = det.detect(imgs[i])
            _expect_equal(reference, str(i), (r.boxes, r.scores, r.class_ids))


@needs_torch
def test_ssd_detect_applies_the_artifacts_cap(tv_onnx, tmp_path):
    from PIL import Image

    from ssd_deploy.cli.detect import main

    img = tmp_path / "a.png"
    Image.fromarray(tv_weights.images()[0]).save(img)
    assert main(["--engine", str(tv_onnx), str(img), "--min-score", "0", "--output", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "o" / "a.json").read_text())["detections"]) == 200
    assert main(["--engine", str(tv_onnx), str(img), "--min-score", "0", "--output", str(tmp_path / "p"),
                 "--device", "cpu", "--keep-top-k", "50"]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "p" / "a.json").read_text())["detections"]) == 50


@needs_torch
def test_ssd_check_passes_on_its_own_export(tv_onnx, tv_pth, tmp_path):
    from PIL import Image

    from ssd_deploy.cli.check import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(tv_weights.images()[2]).save(folder / "640x480.png")
    report = tmp_path / "check.json"
    assert main(["--engine", str(tv_onnx), "--weights", str(tv_pth), "--images", str(folder),
                 "--json", str(report), "--min-score", "0.05"]) == 0  # fmt: skip
    full = json.loads(report.read_text())
    d = full["detections"]
    assert d["reference"] == d["artifact"] > 0 and d["missing"] == d["extra"] == 0
    assert full["notes"] == []  # the artifact carries what the checkpoint's format implies


@needs_torch
def test_ssd_check_notes_an_artifact_without_the_formats_semantics():
    import torch

    from ssd_deploy.check import _semantics_notes
    from ssd_deploy.config import DetectParams
    from ssd_deploy.model.checkpoint import config_for_checkpoint

    sd = {k: torch.from_numpy(v) for k, v in tv_weights.state_dict().items()}
    tv = config_for_checkpoint(sd)
    assert _semantics_notes(tv, tv) == [] and _semantics_notes(tv, None) == []
    # What an export made before torchvision's rules were applied looked like.
    old = tv.replace(detect=DetectParams(), mean=(123.0, 117.0, 104.0))
    (note,) = _semantics_notes(old, tv)
    assert "Detect, mean differ" in note and "re-export" in note


# -- bad torchvision files --------------------------------------------------------------------------
def _export_cli(argv, capsys):
    from ssd_deploy.cli.export import main

    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.err


@needs_torch
@pytest.mark.parametrize(
    "change, pattern",
    [
        ("classes", (r"head\.classification_head\.module_list\.3\.weight has shape \(126, 256, 3, 3\), "
                     r"expected 546 outputs")),
        ("missing", r"torchvision head tensor head\.regression_head\.module_list\.2\.bias is missing"),
    ],
)  # fmt: skip
def test_bad_torchvision_heads(tmp_path, capsys, change, pattern):
    import re

    import torch

    sd = {k: torch.from_numpy(v) for k, v in tv_weights.state_dict().items()}
    if change == "classes":
        key = "head.classification_head.module_list.3"
        sd[f"{key}.weight"], sd[f"{key}.bias"] = torch.zeros(6 * 21, 256, 3, 3), torch.zeros(6 * 21)
    else:
        del sd["head.regression_head.module_list.2.bias"]
    path = tmp_path / "bad_tv.pth"
    torch.save(sd, path)
    out = tmp_path / "m.onnx"
    code, err = _export_cli(["--weights", str(path), "--output", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "bad_tv.pth" in err and re.search(pattern, " ".join(err.split())), err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad_tv.pth"]


@needs_torch
def test_other_class_count_is_a_consistent_torchvision_model():
    import torch

    from ssd_deploy.model.checkpoint import config_for_checkpoint

    sd = {k: torch.from_numpy(v) for k, v in tv_weights.state_dict(num_classes=21).items()}
    cfg = config_for_checkpoint(sd)
    # A torchvision model fine-tuned on 21 classes: still torchvision's priors and post-process.
    assert cfg.num_classes == 21 and cfg.prior.name == "coco300" and cfg.prior.clip == "wh"
    assert cfg.detect.clip_boxes and cfg.detect.keep_top_k == 200
    assert config_for_checkpoint(sd, channel_order="BGR").mean == (104.0, 117.0, 123.0)


# -- torchvision itself, when the reference environment is there ------------------------------------
@needs_torch
@pytest.mark.skipif(not TVREF_PYTHON.exists(),
                    reason=f"no torchvision reference environment at {TVREF_PYTHON.parent.parent} "
                           "(make tv-reference builds it)")  # fmt: skip
def test_live_torchvision(tmp_path, tv_onnx):
    from ssd_deploy.runtime import Detector

    out = tmp_path / "live.npz"
    chosen = (0, 2)  # one image at the network size, one resized: torchvision on a CPU is slow
    cmd = [str(TVREF_PYTHON), str(SCRIPT), "--out", str(out), "--no-synthetic",
           "--images", ",".join(map(str, chosen))]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    live = dict(np.load(out))
    assert str(live["weights_digest"]) == tv_weights.digest(tv_weights.state_dict())
    imgs = tv_weights.images()
    with Detector.load(tv_onnx, device="cpu") as det:
        for i in chosen:
            r = det.detect(imgs[i])
            _expect_equal(live, str(i), (r.boxes, r.scores, r.class_ids))


@needs_torch
def test_ssd_pytorch_checkpoints_keep_ssd_pytorch_semantics(ssd300_model):
    from ssd_deploy.config import DetectParams
    from ssd_deploy.model.checkpoint import config_for_checkpoint, describe_detect

    cfg = config_for_checkpoint(ssd300_model.state_dict())
    assert cfg.detect == DetectParams()  # no clipping, no clamp, no per-image cap, NaN IoU drops
    assert cfg.prior.name == "voc300" and cfg.prior.clip == "all" and cfg.mean == (123.0, 117.0, 104.0)
    assert describe_detect(cfg.detect).endswith("(ssd.pytorch semantics)")
    # Explicit overrides win over the format's defaults.
    tv_like = config_for_checkpoint(ssd300_model.state_dict(), detect=DetectParams(keep_top_k=100))
    assert tv_like.detect.keep_top_k == 100
