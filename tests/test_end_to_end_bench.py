"""``ssd-bench`` on an end-to-end artifact: the decode+NMS stage moves into the engine's compute."""

from __future__ import annotations

import json

import pytest

from ssd_deploy.cli.bench import main
from ssd_deploy.endtoend import add_end_to_end
from tests.test_bench import _tiny_onnx

pytest.importorskip("onnxruntime")


def test_bench_reports_detect_in_the_engine(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    plain = _tiny_onnx(tmp_path / "tiny.onnx")
    e2e = tmp_path / "tiny_e2e.onnx"
    add_end_to_end(plain, e2e)
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    out = tmp_path / "r.json"
    rc = main([str(a) for a in ["--engine", f"numpy={plain}", "--engine", f"graph={e2e}", "--batch", "2",
                                "--warmup", "1", "--iterations", "3", "--images", tmp_path / "img",
                                "--json", out, "--markdown", tmp_path / "r.md"]])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "decode + NMS ran in the engine" in text
    report = json.loads(out.read_text())
    assert {e["label"]: e["detect"] for e in report["engines"]} == {"numpy": "numpy", "graph": "engine"}
    md = (tmp_path / "r.md").read_text()
    assert "| graph | 2 |" in md and "ran in the engine (inside compute)" in md
    graph_row = next(line for line in md.splitlines() if line.startswith("| graph | 2 |") and "*" in line)
    assert graph_row
