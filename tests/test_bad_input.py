"""Bad input, table-driven, for every command and the Python API: the right exit code, one line that
names the file or option, no traceback, and nothing left on disk (docs/architecture.md, "Commands")."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from quantize_models import tiny_ssd

    p = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(tiny_ssd(), p)
    return p


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """An empty working folder; the test asserts it is still empty (or holds only its inputs) after."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def _run(cmd: str, argv: list[str], capsys) -> tuple[int, str]:
    main = importlib.import_module(f"ssd_deploy.cli.{cmd}").main
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


# (command, argv with {work}/{onnx} placeholders, exit code, text the one line must contain)
CASES = [
    ("export", ["--mean", "nan", "1", "2"], 2, "--mean"),
    ("export", ["--opset", "5"], 2, "--opset"),
    ("export", ["--num-classes", "100000", "--output", "{work}/m.onnx"], 2, "--num-classes"),
    ("export", ["--size", "301"], 2, "--size"),
    ("export", ["--weights", "{work}/missing.pth", "--output", "{work}/m.onnx"], 2, "missing.pth"),
    ("export", ["--output", "{work}/m.txt"], 2, "m.txt"),
    ("export", ["--output", "{work}"], 2, "directory"),
    ("check", ["--engine", "{onnx}", "--batch", "-1"], 2, "--batch"),
    ("check", ["--engine", "{onnx}", "--min-score", "2"], 2, "--min-score"),
    ("check", ["--engine", "{onnx}", "--min-score", "nan"], 2, "--min-score"),
    ("check", ["--engine", "{work}/none.onnx"], 2, "none.onnx"),
    ("check", ["--engine", "{onnx}", "--json", "{work}/no/such/dir/../../x.txt"], 2, "x.txt"),
    ("detect", ["--engine", "{onnx}", "{work}/nothing.jpg"], 2, "nothing.jpg"),
    ("detect", ["--engine", "{onnx}", "--min-score", "nan", "--samples"], 2, "--min-score"),
    ("detect", ["--engine", "{onnx}", "--keep-top-k", "abc", "--samples"], 2, "--keep-top-k"),
    ("detect", ["--engine", "{work}/x.onnx", "--samples"], 2, "x.onnx"),
    ("detect", ["--engine", "{work}/x.bin", "--samples"], 2, "x.bin"),
    ("bench", ["--engine", "{onnx}", "--batch", "0"], 2, "--batch"),
    ("bench", ["--engine", "{onnx}", "--json", "{work}"], 2, "work"),
    ("bench", ["--engine", "{onnx}", "--iterations", "-3"], 2, "--iterations"),
    ("quantize", ["--onnx", "{work}/none.onnx", "--precision", "fp16", "--calib-samples"], 2, "none.onnx"),
    (
        "quantize",
        ["--onnx", "{onnx}", "--precision", "int8", "--calib-samples", "--percentile", "inf"],
        2,
        "--percentile",
    ),
    (
        "quantize",
        ["--onnx", "{onnx}", "--precision", "fp16", "--calib-samples", "--output", "{onnx}"],
        2,
        "overwrite",
    ),
    ("build", ["--onnx", "{work}/none.onnx"], 2, "none.onnx"),
    ("build", ["--onnx", "{onnx}", "--batch", "8:1:4"], 2, "--batch"),
    ("build", ["--onnx", "{onnx}", "--gpu", "-1"], 2, "--gpu"),
    ("triton", ["--engine", "{work}/none.plan", "--output", "{work}/repo"], 2, "none.plan"),
    ("triton", [], 2, "--engine"),
    (
        "triton",
        ["--engine", "{onnx}", "--output", "{work}/repo", "--max-megapixels", "0"],
        2,
        "--max-megapixels",
    ),
    ("serve", ["--engine", "{work}/none.onnx"], 2, "none.onnx"),
    ("serve", ["--engine", "{onnx}", "--port", "-5"], 2, "--port"),
]


@pytest.mark.parametrize("cmd, argv, code, text", CASES, ids=[f"{c[0]}:{' '.join(c[1])[:40]}" for c in CASES])
def test_command_refuses_bad_input(cmd, argv, code, text, work, tiny_onnx, capsys):
    args = [a.format(work=work, onnx=tiny_onnx) for a in argv]
    try:
        got, err = _run(cmd, args, capsys)
    except SystemExit as e:  # argparse: usage errors exit 2 from parse_args
        got, err = e.code, capsys.readouterr().err.strip()
    assert got == code, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert text in lines[0] and "Traceback" not in err
    assert list(work.iterdir()) == [], "left files behind"
    assert not [p for p in tiny_onnx.parent.iterdir() if p.name != tiny_onnx.name], "wrote next to the input"


def test_detect_writes_nothing_when_one_image_is_bad(work, tiny_onnx, capsys):
    from PIL import Image

    imgs = work / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(imgs / f"{i}.png")
    (imgs / "1b.png").write_bytes(b"not a png")
    code, err = _run("detect", ["--engine", str(tiny_onnx), str(imgs), "--output", str(work / "out")], capsys)
    assert code == 2 and "1b.png" in err and len(err.splitlines()) == 1
    assert not (work / "out").exists()


def test_detect_same_stem_does_not_overwrite(ssd300_onnx, work, capsys):
    from PIL import Image

    for sub in ("a", "b"):
        (work / sub).mkdir()
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(work / sub / "img.png")
    out = work / "out"
    code, _ = _run("detect", ["--engine", str(ssd300_onnx), str(work / "a" / "img.png"),
                              str(work / "b" / "img.png"), "--output", str(out)], capsys)  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["img.json", "img.png", "img_2.json", "img_2.png"]


def test_quantize_report_failure_leaves_no_model(tiny_onnx, work, capsys):
    out = work / "q.onnx"
    report = work / "r" / "report.json"
    (work / "r").write_text("a file where a folder should be")
    argv = ["--onnx", str(tiny_onnx), "--precision", "fp16", "--calib-samples",
            "--calib-count", "1", "--output", str(out), "--report", str(report)]  # fmt: skip
    code, err = _run("quantize", argv, capsys)
    assert code == 2 and "report.json" in err and len(err.splitlines()) == 1
    assert not out.exists()


# -- the Python API --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector(ssd300_onnx):
    from ssd_deploy.runtime import Detector

    return Detector.load(ssd300_onnx, device="cpu")


@pytest.mark.parametrize(
    "images, kwargs, text",
    [
        (None, {}, "NoneType"),
        (123, {}, "int"),
        (np.zeros((0, 0, 3), np.uint8), {}, "empty array"),
        ([np.zeros((8, 8, 3), np.uint8), b"junk", np.zeros((8, 8, 3), np.uint8)], {}, "image 1 of 3"),
        (np.zeros((8, 8, 3), np.uint8), {"keep_top_k": "abc"}, "keep_top_k"),
        (np.zeros((8, 8, 3), np.uint8), {"top_k": 2.5}, "top_k"),
        (np.zeros((8, 8, 3), np.uint8), {"conf_thresh": float("nan")}, "conf_thresh"),
    ],
    ids=["none", "int", "empty", "bad-item", "keep_top_k-str", "top_k-float", "conf-nan"],
)
def test_api_refuses_bad_input(detector, images, kwargs, text):
    from ssd_deploy.errors import SSDDeployError

    with pytest.raises(SSDDeployError) as e:
        detector.detect(images, **kwargs)
    msg = str(e.value)
    assert text in msg and "\n" not in msg


def test_graph_that_disagrees_with_its_metadata_names_the_file(tiny_onnx):
    from ssd_deploy.runtime import BackendError, Detector

    det = Detector.load(tiny_onnx, device="cpu")
    with pytest.raises(BackendError, match="tiny.onnx"):
        det.detect(np.zeros((20, 20, 3), np.uint8))


def test_nan_output_is_an_error_not_an_empty_result(detector, monkeypatch):
    from ssd_deploy.runtime import BackendError

    def nan_run(images):
        n, p, c = images.shape[0], detector.config.num_priors, detector.config.num_classes
        return np.zeros((n, p, 4), np.float32), np.full((n, p, c), np.nan, np.float32)

    monkeypatch.setattr(detector.backend, "run", nan_run)
    with pytest.raises(BackendError, match="non-finite"):
        detector.detect(np.zeros((20, 20, 3), np.uint8))


# -- interrupts --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_export_leaves_nothing(tmp_path, sig):
    """Export writes into a hidden temp file beside the output; a signal mid-way removes it, exit 130."""
    out = tmp_path / "o" / "m.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ssd_deploy.export", "--output", str(out), "--no-verify"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.parent.glob(".m.onnx.*")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert list(out.parent.glob(".m.onnx.*")), "the export never started writing"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    assert list(out.parent.iterdir()) == []
