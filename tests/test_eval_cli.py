"""``ssd-eval`` end to end: the seeded SSD300 as FP32, FP16 and INT8 ONNX on a synthetic VOC set beside
its PyTorch reference; detections files; the gallery; bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from eval_synth import perturbed_detections, random_scenes, write_coco, write_voc

from ssd_deploy.cli.eval import main

# Small objects: the seeded (untrained) SSD's surviving boxes are small, so some hit and the AP is not 0.
# Four images keep the 4 x 4 SSD300 passes on a shared 2-core CPU near a minute.
SCENES = random_scenes(
    4, seed=11, classes=("person", "car", "dog", "cat", "bird", "sheep"), scale=(0.07, 0.2), per_image=8
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evaldata")
    root = write_voc(base / "VOCdevkit", SCENES)
    ann, imgs = write_coco(base / "coco", SCENES)
    return {"voc": root, "ann": ann, "imgs": imgs}


@pytest.fixture(scope="module")
def artifacts(ssd300_onnx, data, tmp_path_factory) -> dict[str, Path]:
    from ssd_deploy.quantize import gather_images, quantize_fp16, quantize_int8

    out = tmp_path_factory.mktemp("evalq")
    images = gather_images(sorted((data["voc"] / "JPEGImages").glob("*.jpg"))[:2])
    cache = out / "calib.json"
    fp16 = quantize_fp16(ssd300_onnx, images, output=out / "ssd300_fp16.onnx", cache=cache, verify=False)
    int8 = quantize_int8(ssd300_onnx, images, output=out / "ssd300_int8.onnx", cache=cache, verify=False)
    return {"fp32": ssd300_onnx, "fp16": fp16.output, "int8": int8.output}


@pytest.mark.slow
def test_fp32_fp16_int8_beside_the_reference(artifacts, data, tmp_path, capsys):
    report, saved, gallery = tmp_path / "r.json", tmp_path / "dets.json", tmp_path / "gallery"
    rc = main(
        [
            "--engine",
            str(artifacts["fp32"]),
            "--engine",
            str(artifacts["fp16"]),
            "--engine",
            str(artifacts["int8"]),
            "--dataset",
            f"voc:{data['voc']}:test",
            "--json",
            str(report),
            "--save-detections",
            str(saved),
            "--gallery",
            str(gallery),
            "--max-drop",
            "100",
            "--batch",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "VOC07 11-point AP at IoU 0.5" in out
    r = json.loads(report.read_text())
    names = [m["name"] for m in r["models"]]
    assert names[0].startswith("reference") and len(names) == 4  # one reference run shared by all three
    ref = r["models"][0]
    assert ref["precision"] == "fp32" and ref["backend"] == "torch"
    assert ref["mAP"] > 0  # the seeded model's boxes do hit the large synthetic objects: not a 0 == 0 test
    by_prec = {m["precision"]: m for m in r["models"][1:]}
    assert set(by_prec) == {"fp32", "fp16", "int8"}
    fp32 = by_prec["fp32"]
    assert round(100 * (fp32["mAP"] - ref["mAP"]), 4) == 0  # FP32 vs reference: 0 to 4 decimals
    for cls, ap in ref["per_class"].items():
        assert (ap is None and fp32["per_class"][cls] is None) or round(
            100 * (fp32["per_class"][cls] - ap), 4
        ) == 0
    verdicts = {v["artifact"]: v for v in r["verdicts"]}
    assert len(verdicts) == 3 and all(v["passed"] for v in verdicts.values()) and r["passed"]
    # the saved detections evaluate to the same mAP (boxes rounded to 0.01 px in the file)
    files = sorted(tmp_path.glob("dets.*.json"))
    assert len(files) == 3
    fp32_file = next(f for f in files if f.name == "dets.ssd300.json")
    rc = main(
        [
            "--detections",
            str(fp32_file),
            "--dataset",
            f"voc:{data['voc']}",
            "--json",
            str(tmp_path / "d.json"),
        ]
    )
    assert rc == 0
    again = json.loads((tmp_path / "d.json").read_text())["models"][0]
    assert again["mAP"] == pytest.approx(fp32["mAP"], abs=2e-4)
    assert (gallery / "index.html").is_file()
    pngs = list(gallery.glob("*.png"))
    assert pngs and all(p.name in (gallery / "index.html").read_text() for p in pngs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_gate_fails_when_an_artifact_drops(ssd300_onnx, data, tmp_path, capsys, monkeypatch):
    """Exit 1 when an artifact is more than --max-drop below its reference. Inference is replaced
    (the rest is real: loading both models, scoring, the verdict): the reference "detects" every
    ground-truth box, the artifact every second one."""
    from ssd_deploy.evaluation import runner
    from ssd_deploy.evaluation.datasets import DetectionSet

    def fake_run(det, dataset, **kw):
        parts = []
        for i, rec in enumerate(dataset.images):
            keep = slice(None) if det.backend.name == "torch" else slice(None, None, 2)
            b = rec.boxes[keep] - 1.0  # devkit frame -> model frame
            n = len(b)
            parts.append(DetectionSet(np.full(n, i), rec.labels[keep], np.linspace(0.9, 0.5, n), b))
        return DetectionSet.concat(parts)

    monkeypatch.setattr(runner, "run_detector", fake_run)
    out = tmp_path / "g.json"
    rc = main(["--engine", str(ssd300_onnx), "--dataset", f"voc:{data['voc']}", "--json", str(out)])
    assert rc == 1
    r = json.loads(out.read_text())
    assert r["models"][0]["mAP"] == 1.0 and r["models"][1]["mAP"] < 1.0 and not r["passed"]
    assert r["verdicts"][0]["max_drop"] == 0.05  # the FP32 default
    assert "FAIL" in capsys.readouterr().out
    rc = main(["--engine", str(ssd300_onnx), "--dataset", f"voc:{data['voc']}", "--max-drop", "100"])
    assert rc == 0


def test_coco_detections_file_and_engine(artifacts, data, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    dets = tmp_path / "cocodets.json"
    dets.write_text(json.dumps(perturbed_detections(SCENES, seed=2, voc=False)))
    spec = f"coco:{data['ann']}:{data['imgs']}"
    rc = main(["--detections", str(dets), "--dataset", spec, "--json", str(tmp_path / "c.json")])
    assert rc == 0
    res = json.loads((tmp_path / "c.json").read_text())["models"][0]
    assert res["metric"] == "coco" and 0 < res["mAP"] <= 1 and set(res["summary"]) >= {"AP50", "AR100", "APs"}
    rc = main(["--engine", str(artifacts["fp32"]), "--reference", "none", "--dataset", spec, "--limit", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "AP@[.5:.95]" in out and "AR100" in out


def _bad(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "out.json"
    rc = main(argv + ["--json", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_bad_input_is_one_line_exit_2_nothing_written(data, tmp_path, capsys, ssd300_onnx):
    eng = ["--engine", str(ssd300_onnx)]
    _bad(tmp_path, capsys, eng + ["--dataset", f"voc:{tmp_path}"], "not a VOC layout")
    _bad(tmp_path, capsys, eng + ["--dataset", f"voc:{data['voc']}:train"], "no such split file")
    _bad(tmp_path, capsys, eng + ["--dataset", "kitti:/x"], "expected voc:")
    broken = shutil.copytree(data["voc"], tmp_path / "VOC2007")
    (broken / "Annotations" / "000002.xml").write_text("<annotation><object>")
    _bad(tmp_path, capsys, eng + ["--dataset", f"voc:{broken}"], "000002.xml: not a valid annotation XML")
    (broken / "Annotations" / "000002.xml").write_text(
        (data["voc"] / "Annotations" / "000002.xml").read_text()
    )
    (broken / "JPEGImages" / "000003.jpg").unlink()
    _bad(tmp_path, capsys, eng + ["--dataset", f"voc:{broken}"], "'000003' is listed but")
    bad_json = tmp_path / "ann.json"
    bad_json.write_text("{not json")
    _bad(tmp_path, capsys, eng + ["--dataset", f"coco:{bad_json}:{data['imgs']}"], "ann.json: not valid JSON")
    dets = tmp_path / "d.json"
    dets.write_text(
        json.dumps([{"image_id": "999999", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    )
    _bad(
        tmp_path,
        capsys,
        ["--detections", str(dets), "--dataset", f"voc:{data['voc']}"],
        "unknown image_id '999999'",
    )
    dets.write_text(
        json.dumps([{"image_id": "000001", "category_id": 21, "bbox": [0, 0, 1, 1], "score": 0.5}])
    )
    _bad(
        tmp_path,
        capsys,
        ["--detections", str(dets), "--dataset", f"voc:{data['voc']}"],
        "unknown category_id 21",
    )
    dets.write_text(
        json.dumps([{"image_id": "000001", "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}])
    )
    _bad(tmp_path, capsys, ["--detections", str(dets), "--dataset", f"voc:{data['voc']}"], "non-finite")
    _bad(
        tmp_path,
        capsys,
        ["--engine", str(tmp_path / "nope.onnx"), "--dataset", f"voc:{data['voc']}"],
        "no such artifact file",
    )
    _bad(
        tmp_path,
        capsys,
        eng + ["--dataset", f"voc:{data['voc']}", "--metric", "coco"],
        "needs a COCO dataset",
    )
    import onnx
    from quantize_models import tiny_ssd

    tiny = tmp_path / "tiny.onnx"  # its metadata names no weights
    onnx.save(tiny_ssd(), str(tiny))
    ds = ["--dataset", f"voc:{data['voc']}"]
    _bad(tmp_path, capsys, ["--engine", str(tiny)] + ds, "pass --reference CHECKPOINT")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    _bad(tmp_path, capsys, eng + ["--dataset", f"voc:{data['voc']}", "--gallery", str(full)], "is not empty")
    assert sorted(p.name for p in full.iterdir()) == ["x"]
