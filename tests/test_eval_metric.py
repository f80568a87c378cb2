"""The VOC metric against values derived by hand, the COCO path against pycocotools, and the readers.

Hand derivations (docs/evaluation.md states the rules): detections are listed in score order with
TP / FP / ignored, then recall = cumTP / npos and precision = cumTP / (cumTP + cumFP).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from eval_synth import Obj, Scene, perturbed_detections, random_scenes, voc_perfect, write_coco, write_voc

from ssd_deploy.evaluation import COCO_CATEGORY_IDS, label_map, load_coco, load_voc, read_detections, voc_ap
from ssd_deploy.evaluation.datasets import DatasetError, parse_dataset_spec
from ssd_deploy.evaluation.voc import evaluate_voc

# Class "dog" (case 1): image A has g1, g2; image B has g3, g4 and a difficult gD. All 100 x 100.
G1, G2 = Obj("dog", (0, 0, 100, 100)), Obj("dog", (150, 0, 100, 100))
G3, G4, GD = (
    Obj("dog", (0, 0, 100, 100)),
    Obj("dog", (150, 0, 100, 100)),
    Obj("dog", (0, 150, 100, 100), True),
)
# "cat": one object; "cow": only a difficult one (AP undefined); "horse": never detected (AP 0).
C1 = Obj("cat", (0, 300, 100, 100))
COW = Obj("cow", (300, 300, 50, 50), True)
HORSE = Obj("horse", (300, 150, 60, 60))
SCENES = [Scene("A", 400, 400, [G1, G2, C1]), Scene("B", 400, 400, [G3, G4, GD, COW, HORSE])]


def _shift(o: Obj, dx: int) -> list[float]:
    b = voc_perfect(o)
    return [b[0] + dx, b[1], b[2], b[3]]


def _det(image: str, name: str, bbox: list[float], score: float) -> dict:
    from ssd_deploy.config import VOC_CLASSES

    return {"image_id": image, "category_id": VOC_CLASSES.index(name) + 1, "bbox": bbox, "score": score}


@pytest.fixture()
def hand_case(tmp_path: Path):
    root = write_voc(tmp_path, SCENES)
    dets = [
        _det("A", "dog", voc_perfect(G1), 0.9),  # TP (g1)
        _det("A", "dog", _shift(G1, 10), 0.8),  # FP: duplicate of g1 (IoU 90/110)
        _det("B", "dog", voc_perfect(GD), 0.7),  # ignored: difficult
        _det("B", "dog", [300.0, 300.0, 50.0, 50.0], 0.6),  # FP: nothing there
        _det("B", "dog", _shift(G3, 20), 0.5),  # TP (g3, IoU 80/120)
        _det("A", "dog", _shift(G2, 40), 0.4),  # FP: IoU 60/140 < 0.5
        _det("A", "cat", voc_perfect(G1), 0.95),  # cat FP: right place, wrong class
        _det("A", "cat", voc_perfect(C1), 0.3),  # cat TP
    ]
    f = tmp_path / "dets.json"
    f.write_text(json.dumps(dets))
    ds = load_voc(root, "test")
    return ds, read_detections(f, ds)


def test_voc07_and_voc12_by_hand(hand_case):
    ds, dets = hand_case
    # dog: TP FP (ign) FP TP FP, npos 4 -> rec .25 .25 .25 .25 .5 .5, prec 1 .5 .5 1/3 .5 .4
    # voc07: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> .5; t >= .6 -> 0: 4.5 / 11
    # voc12: .25 * 1 + .25 * .5 = .375
    # cat: FP TP, npos 1 -> rec 0 1, prec 0 .5: .5 in both; horse 0; cow undefined (only difficult)
    r07 = evaluate_voc(ds, dets, "voc07")
    r12 = evaluate_voc(ds, dets, "voc12")
    # ssd.pytorch's convention moves every IoU a little (see the half-box test) but none of these
    # across 0.5 (0.96, 0.79, 0.64, 0.41 for d1, d2, d5, d6): the same values
    for a, b in (
        (r07, evaluate_voc(ds, dets, "voc07", convention="ssd.pytorch")),
        (r12, evaluate_voc(ds, dets, "voc12", convention="ssd.pytorch")),
    ):
        assert (
            a.per_class["dog"] == pytest.approx(b.per_class["dog"], abs=1e-12)
            and b.convention == "ssd.pytorch"
        )
    assert r07.per_class["dog"] == pytest.approx(4.5 / 11, abs=1e-12)
    assert r12.per_class["dog"] == pytest.approx(0.375, abs=1e-12)
    for r in (r07, r12):
        assert r.per_class["cat"] == pytest.approx(0.5, abs=1e-12)
        assert r.per_class["horse"] == 0.0
        assert np.isnan(r.per_class["cow"]) and np.isnan(r.per_class["aeroplane"])
        assert r.positives["dog"] == 4 and r.positives["cow"] == 0
    assert r07.map == pytest.approx((4.5 / 11 + 0.5 + 0.0) / 3, abs=1e-12)
    assert r12.map == pytest.approx((0.375 + 0.5 + 0.0) / 3, abs=1e-12)


def test_ties_keep_file_order_and_iou_half_counts(tmp_path):
    o = Obj("bird", (10, 10, 100, 100))
    root = write_voc(tmp_path, [Scene("X", 200, 200, [o])])
    ds = load_voc(root)
    fp, tp = _det("X", "bird", [150.0, 150.0, 20.0, 20.0], 0.5), _det("X", "bird", voc_perfect(o), 0.5)
    for order, want in (([fp, tp], 0.5), ([tp, fp], 1.0)):  # FP then TP: rec 0 1, prec 0 .5
        f = tmp_path / "d.json"
        f.write_text(json.dumps(order))
        for m in ("voc07", "voc12"):
            assert evaluate_voc(ds, read_detections(f, ds), m).per_class["bird"] == pytest.approx(want)
    # The top half of the box: 100 x 50 inclusive pixels inside 100 x 100: IoU exactly 0.5, a TP (devkit >=)
    half = voc_perfect(o)
    half[3] = 49.0
    f.write_text(json.dumps([_det("X", "bird", half, 0.9)]))
    assert evaluate_voc(ds, read_detections(f, ds), "voc07").per_class["bird"] == 1.0
    # ssd.pytorch's eval.py: ground truth - 1 and continuous areas give 4802 / 9850 = 0.4875,
    # and it needs > 0.5
    assert (
        evaluate_voc(ds, read_detections(f, ds), "voc07", convention="ssd.pytorch").per_class["bird"] == 0.0
    )
    half[3] = 48.0  # 49 rows: below 0.5
    f.write_text(json.dumps([_det("X", "bird", half, 0.9)]))
    assert evaluate_voc(ds, read_detections(f, ds), "voc07").per_class["bird"] == 0.0


def test_voc_ap_11_points_are_exact_tenths():
    # recall exactly 0.3 must count for t = 0.3 (np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004)
    rec, prec = np.array([0.3]), np.array([1.0])
    assert voc_ap(rec, prec, "voc07") == pytest.approx(4 / 11)
    assert voc_ap(rec, prec, "voc12") == pytest.approx(0.3)


def test_coco_metric_equals_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ssd_deploy.evaluation.coco import COCO_STATS, evaluate_coco

    scenes = random_scenes(30, seed=3, classes=("person", "car", "dog", "cat", "bird"), size=(200, 150))
    ann, imgs = write_coco(tmp_path, scenes)
    dets = perturbed_detections(scenes, seed=4, voc=False)
    f = tmp_path / "dets.json"
    f.write_text(json.dumps(dets))
    ds = load_coco(ann, imgs)
    ours = evaluate_coco(ds, read_detections(f, ds))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        ev = COCOeval(gt, gt.loadRes(str(f)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    theirs = dict(zip(COCO_STATS, ev.stats))
    assert theirs["AP"] > 0.1  # the perturbations leave a non-trivial AP
    for k, v in theirs.items():
        assert (np.isnan(ours.summary[k]) and v == -1) or ours.summary[k] == pytest.approx(v, abs=1e-6), k
    assert ours.map == pytest.approx(theirs["AP"], abs=1e-6)


def test_same_scenes_in_both_layouts(tmp_path):
    scenes = random_scenes(12, seed=1)
    voc = load_voc(write_voc(tmp_path / "voc", scenes))
    coco = load_coco(*write_coco(tmp_path / "coco", scenes))
    assert [r.image_id for r in voc.images] == [f"{i + 1:06d}" for i in range(12)]
    assert sum(len(r.labels) == 0 for r in voc.images) == 3  # empty scenes
    assert any(r.difficult.any() for r in voc.images)
    for v, c in zip(voc.images, coco.images):
        np.testing.assert_array_equal(v.boxes - [1, 1, 0, 0], c.boxes)  # 1-based inclusive vs continuous
        np.testing.assert_array_equal(v.difficult, c.difficult)
        assert [voc.categories[k] for k in v.labels] == [coco.categories[k] for k in c.labels]


def test_perturbed_detections_score_the_same_in_voc_as_the_devkit_loop(tmp_path):
    """Cross-check the vectorised matcher against a direct transcription of the devkit's loop."""
    scenes = random_scenes(40, seed=7)
    ds = load_voc(write_voc(tmp_path, scenes))
    f = tmp_path / "d.json"
    f.write_text(json.dumps(perturbed_detections(scenes, seed=8)))
    dets = read_detections(f, ds)
    ours = evaluate_voc(ds, dets, "voc12")
    for label, name in ds.categories.items():
        gts = [
            (i, b, d)
            for i, r in enumerate(ds.images)
            for b, lab, d in zip(r.boxes, r.labels, r.difficult)
            if lab == label
        ]
        npos = sum(not d for _, _, d in gts)
        if npos == 0:
            assert np.isnan(ours.per_class[name])
            continue
        sel = np.flatnonzero(dets.labels == label)
        sel = sel[np.argsort(-dets.scores[sel], kind="stable")]
        taken, tp, fp = set(), [], []
        for k in sel:
            bb = dets.boxes[k] + 1
            best, jbest = -np.inf, None
            for j, (i, g, _d) in enumerate(gts):
                if i != dets.image_index[k]:
                    continue
                iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
                ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
                if iw > 0 and ih > 0:
                    ov = (
                        iw
                        * ih
                        / (
                            (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                            + (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
                            - iw * ih
                        )
                    )
                    if ov > best:
                        best, jbest = ov, j
            if best >= 0.5:
                if gts[jbest][2]:
                    tp.append(0), fp.append(0)
                elif jbest not in taken:
                    taken.add(jbest), tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        tpc, fpc = np.cumsum(tp), np.cumsum(fp)
        want = (
            voc_ap(tpc / npos, tpc / np.maximum(tpc + fpc, np.finfo(float).eps), "voc12") if sel.size else 0.0
        )
        assert ours.per_class[name] == pytest.approx(want, abs=1e-12), name


def test_label_maps():
    from ssd_deploy.config import COCO_CLASSES, VOC_CLASSES
    from ssd_deploy.evaluation.datasets import EvalDataset
    from ssd_deploy.model.weights import TORCHVISION_COCO_CATEGORIES

    coco = EvalDataset("coco", Path("x.json"), [], dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES)))
    m = label_map(("background",) + COCO_CLASSES, coco)
    assert m[0] == -1 and m[1] == 1 and m[12] == 13 and m[80] == 90  # person, stop sign, toothbrush
    tv = label_map(TORCHVISION_COCO_CATEGORIES, coco)
    assert tv[13] == 13 and tv[12] == -1 and tv[90] == 90  # ids are labels; "N/A" maps nowhere
    old = label_map(("background",) + COCO_CLASSES + tuple(f"class_{i}" for i in range(81, 201)), coco)
    assert (old[81:] == -1).all() and old[80] == 90
    voc = EvalDataset("voc", Path("VOC2007"), [], {i + 1: n for i, n in enumerate(VOC_CLASSES)})
    assert (label_map(("background",) + VOC_CLASSES, voc)[1:] == np.arange(1, 21)).all()
    with pytest.raises(DatasetError, match="none of the model's classes"):
        label_map(("background", "widget"), voc)


def test_dataset_specs():
    assert parse_dataset_spec("voc:VOCdevkit/VOC2007") == ("voc", Path("VOCdevkit/VOC2007"), None)
    assert parse_dataset_spec("voc:VOCdevkit/VOC2007:test") == ("voc", Path("VOCdevkit/VOC2007"), "test")
    assert parse_dataset_spec("coco:a/instances_val2017.json:a/val2017") == (
        "coco",
        Path("a/instances_val2017.json"),
        "a/val2017",
    )
    for bad in ("VOC2007", "kitti:x", "coco:x.txt:y"):
        with pytest.raises(DatasetError):
            parse_dataset_spec(bad)


def test_speed_5000_images_200_detections():
    """The metric on 5,000 images x 200 detections takes seconds (benchmarks/ records the figures)."""
    import time

    from ssd_deploy.evaluation.datasets import DetectionSet, EvalDataset, ImageRecord

    rng = np.random.default_rng(0)
    n_img, per = 5000, 200
    images = []
    for i in range(n_img):
        k = int(rng.integers(1, 6))
        xy = rng.uniform(0, 300, (k, 2))
        images.append(
            ImageRecord(
                str(i),
                Path(f"{i}.jpg"),
                500,
                400,
                np.concatenate([xy, xy + rng.uniform(20, 150, (k, 2))], 1),
                rng.integers(1, 21, k),
                rng.random(k) < 0.1,
            )
        )
    from ssd_deploy.config import VOC_CLASSES

    ds = EvalDataset("voc", Path("VOC2007"), images, {i + 1: n for i, n in enumerate(VOC_CLASSES)})
    n = n_img * per
    xy = rng.uniform(0, 300, (n, 2))
    dets = DetectionSet(
        np.repeat(np.arange(n_img), per),
        rng.integers(1, 21, n),
        rng.random(n),
        np.concatenate([xy, xy + rng.uniform(20, 150, (n, 2))], 1),
    )
    t = time.perf_counter()
    evaluate_voc(ds, dets, "voc07")
    assert time.perf_counter() - t < 30  # ~2-4 s measured; loose for a shared machine
