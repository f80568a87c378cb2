"""``python -m ssd_deploy.quantize``: outputs, metadata, the calibration cache and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from quantize_models import tiny_ssd

from ssd_deploy.cli.quantize import main
from ssd_deploy.quantize import CalibrationError, images_from_folder, quantize_fp16, quantize_int8


def _write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        # Smooth random images (a gradient plus noise) rather than pure noise: varied, cheap, real files.
        h, w = 120 + 10 * i, 160
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, rng.integers(0, 256, size=(h, w))], axis=2)
        p = folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(img.astype(np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    onnx.save(tiny_ssd(), str(tmp_path / "tiny.onnx"))
    _write_images(tmp_path / "calib", 3)
    return tmp_path


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_int8_cli_writes_a_tagged_model_and_a_cache(work, capsys):
    rc = main(
        [
            "--onnx",
            str(work / "tiny.onnx"),
            "--precision",
            "int8",
            "--calib-images",
            str(work / "calib"),
            "--method",
            "percentile",
            "--report",
            str(work / "report.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    dst = work / "tiny_int8.onnx"
    meta, src_meta = _meta(dst), _meta(work / "tiny.onnx")
    assert meta["ssd_deploy.precision"] == "int8"
    for key in ("ssd_deploy.config", "ssd_deploy.weights"):
        assert meta[key] == src_meta[key]  # everything else kept
    recipe = json.loads(meta["ssd_deploy.recipe"])
    assert recipe["method"] == "percentile" and recipe["target"] == "tensorrt"
    assert recipe["calibration"]["images"] == 3 and recipe["quantized_nodes"] == 9
    assert "INT8 activation ranges" in out and "saturated" in out
    report = json.loads((work / "report.json").read_text())
    assert set(report["tensors"]) >= {"images", "relu4_3", "l2_out"}
    cache = json.loads((work / "tiny.calib.json").read_text())
    assert cache["format"] == "ssd_deploy.calibration/1" and len(cache["key"]["images"]) == 3
    assert oct(dst.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_fp16_cli_lists_fp32_nodes_with_reasons(work, capsys):
    rc = main(
        [
            "--onnx",
            str(work / "tiny.onnx"),
            "--precision",
            "fp16",
            "--calib-images",
            str(work / "calib"),
            "--no-cache",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    for text in ("node_l2_sum", "rule: l2norm", "node_conf", "rule: softmax", "priors_out", "rule: constant"):
        assert text in out
    meta = _meta(work / "tiny_fp16.onnx")
    recipe = json.loads(meta["ssd_deploy.recipe"])
    assert meta["ssd_deploy.precision"] == "fp16" and recipe["fp32_nodes"]["node_l2_sum"] == "rule:l2norm"
    assert not (work / "tiny.calib.json").exists()


def test_cache_reused_when_valid_rebuilt_when_stale(work):
    src = work / "tiny.onnx"
    images = images_from_folder(work / "calib")
    first = quantize_int8(src, images, method="minmax", verify=False)
    assert first.calibration.status == "collected" and not first.ranges_cached

    again = quantize_int8(src, images, method="minmax", verify=False)
    assert again.calibration.status == "reused" and again.ranges_cached
    assert [r.amax for r in again.ranges] == [r.amax for r in first.ranges]

    other = quantize_int8(src, images, method="percentile", verify=False)  # new method: stats reused
    assert other.calibration.status == "reused" and not other.ranges_cached
    fp16 = quantize_fp16(src, images, verify=False)  # the FP16 range check shares the statistics
    assert fp16.calibration.status == "reused"

    _write_images(work / "calib", 4, seed=1)  # one more image, and new pixels in the first three
    changed = quantize_int8(src, images_from_folder(work / "calib"), method="minmax", verify=False)
    assert changed.calibration.status == "collected" and "images changed" in changed.calibration.detail

    onnx.save(tiny_ssd(seed=7), str(src))  # same layout, new weights
    retrained = quantize_int8(src, images_from_folder(work / "calib"), method="minmax", verify=False)
    assert retrained.calibration.status == "collected" and "model changed" in retrained.calibration.detail

    (work / "tiny.calib.json").write_text("{ not json")
    damaged = quantize_int8(src, images_from_folder(work / "calib"), method="minmax", verify=False)
    assert damaged.calibration.status == "collected" and damaged.calibration.detail.startswith("stale")


@pytest.mark.parametrize(
    "setup, args, message",
    [
        ("empty", [], "no images in the folder"),
        ("few", ["--calib-count", "5"], "--calib-count 5 but only 3 image(s)"),
        ("corrupt", [], "bad.jpg: not a readable image"),
        ("missing", [], "no such folder"),
    ],
)
def test_bad_calibration_input_is_one_line_and_writes_nothing(work, capsys, setup, args, message):
    calib = work / "calib"
    if setup == "empty":
        for p in calib.iterdir():
            p.unlink()
    elif setup == "corrupt":
        (calib / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    elif setup == "missing":
        calib = work / "nowhere"
    before = _listing(work)
    rc = main(["--onnx", str(work / "tiny.onnx"), "--precision", "int8", "--calib-images", str(calib), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in " ".join(err.split())
    assert len(err.strip().splitlines()) <= 2  # one message (rich may wrap a long line once)
    assert _listing(work) == before  # no model, no cache, no temporary file


def test_decode_failure_mid_calibration_leaves_nothing_behind(work, capsys):
    # A truncated JPEG passes the up-front header check and only fails when decoded, after the
    # other images have been run: the error must still name it and nothing may be written.
    good = (work / "calib" / "img00.jpg").read_bytes()
    (work / "calib" / "img99.jpg").write_bytes(good[: len(good) // 2])
    before = _listing(work)
    rc = main(
        ["--onnx", str(work / "tiny.onnx"), "--precision", "fp16", "--calib-images", str(work / "calib")]
    )
    out, err = capsys.readouterr()
    err = " ".join(err.split())
    assert rc == 2 and "img99.jpg" in err and "truncated" in err
    assert "3/4 images" in out  # it did fail mid-way
    assert _listing(work) == before


def test_refuses_to_overwrite_its_input_or_requantize(work, capsys):
    src = work / "tiny.onnx"
    rc = main(
        ["--onnx", str(src), "--precision", "int8", "--calib-images", str(work / "calib"), "-o", str(src)]
    )
    assert rc == 2 and "overwrite the input" in capsys.readouterr().err
    assert main(["--onnx", str(src), "--precision", "fp16", "--calib-images", str(work / "calib")]) == 0
    capsys.readouterr()
    rc = main(
        ["--onnx", str(work / "tiny_fp16.onnx"), "--precision", "int8", "--calib-images", str(work / "calib")]
    )
    assert rc == 2 and "already fp16" in capsys.readouterr().err
    rc = main(
        [
            "--onnx",
            str(src),
            "--precision",
            "int8",
            "--calib-images",
            str(work / "calib"),
            "--exclude",
            "bogus",
        ]
    )
    assert rc == 2 and "matches no node" in capsys.readouterr().err


def test_unwritable_cache_is_a_warning_not_a_failure(work, capsys):
    bad_cache = work / "tiny.onnx" / "cache.json"  # a "folder" that is a file: cannot be created
    calib = str(work / "calib")
    rc = main(
        [
            "--onnx",
            str(work / "tiny.onnx"),
            "--precision",
            "int8",
            "--calib-images",
            calib,
            "--cache",
            str(bad_cache),
        ]
    )
    out = " ".join(capsys.readouterr().out.split())
    assert rc == 0 and (work / "tiny_int8.onnx").is_file()
    assert "could not write the calibration cache" in out and "cached to" not in out


def test_gather_images_count_rules(work):
    with pytest.raises(CalibrationError, match="at least 1"):
        images_from_folder(work / "calib", 0)
    two = images_from_folder(work / "calib", 2)
    assert [p.name for p in two.files] == ["img00.jpg", "img01.png"] and len(set(two.digests)) == 2
