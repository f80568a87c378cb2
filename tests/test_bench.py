"""ssd-bench: statistics definitions, interleaving, report schema and CLI errors. No timing asserts."""

from __future__ import annotations

import csv
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from ssd_deploy.benchmark import (
    BenchError,
    Settings,
    Subject,
    build_report,
    coefficient_of_variation,
    csv_rows,
    interleaved_schedule,
    paired_ratio,
    run_benchmark,
    summarize,
    trt_median,
    trt_percentile,
)
from ssd_deploy.benchmark.report import CSV_COLUMNS, SCHEMA, write_csv, write_json
from ssd_deploy.benchmark.runner import MIN_ROUNDS, STAGES, backend_options, parse_engine, unique_labels
from ssd_deploy.config import METADATA_KEY, preset


# -- statistics (trtexec's definitions) ------------------------------------------------------------
def test_percentiles_follow_trtexec_on_ten_values():
    vals = list(range(10, 0, -1))  # unsorted on purpose: 10..1
    # exclude = int((1 - p/100) * n) in float32: p90 -> int(1.0000002) = 1 -> index 8 -> 9.
    assert trt_percentile(vals, 90) == 9
    # p95 -> int(0.50000006) = 0 -> index 9 -> the max.
    assert trt_percentile(vals, 95) == 10
    assert trt_percentile(vals, 50) == 5  # int(5.0) = 5 -> index 4
    assert trt_percentile(vals, 0) == 1  # exclude = n -> index clamps to 0
    assert trt_percentile(vals, 100) == 10


def test_percentiles_use_single_precision_like_trtexec():
    hundred = np.arange(1, 101, dtype=float)
    assert trt_percentile(hundred, 90) == 90
    assert trt_percentile(hundred, 95) == 95
    # 1 - 0.99f = 0.00999999; * 100 truncates to 0: trtexec's p99 of 100 samples is the max.
    assert trt_percentile(hundred, 99) == 100
    thousand = np.arange(1, 1001, dtype=float)
    # * 1000 = 9.99999 -> 9 -> index 990 -> 991 (double precision would give 990).
    assert trt_percentile(thousand, 99) == 991


def test_percentile_edge_cases():
    assert math.isinf(trt_percentile([], 90))
    assert trt_percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        trt_percentile([1.0], 101)


def test_median_even_and_odd():
    assert trt_median([3, 1, 2]) == 2
    assert trt_median([4, 1, 3, 2]) == 2.5
    assert math.isinf(trt_median([]))


def test_coefficient_of_variation_is_population_std_over_mean_in_percent():
    assert coefficient_of_variation([5, 5, 5]) == 0.0
    # mean 2, population variance ((1)^2 + (1)^2) / 2 = 1 -> 50 %.
    assert coefficient_of_variation([1, 3]) == pytest.approx(50.0)
    # mean 5, deviations -3,-1,1,3 -> variance 5 -> sqrt(5)/5.
    assert coefficient_of_variation([2, 4, 6, 8]) == pytest.approx(100 * math.sqrt(5) / 5)
    assert coefficient_of_variation([0.0, 0.0]) == 0.0  # a stage the backend does not have
    assert math.isinf(coefficient_of_variation([-1.0, 1.0]))


def test_summary_is_ordered_and_scaled():
    rng = np.random.default_rng(1)
    vals = rng.lognormal(mean=-3, sigma=0.5, size=257)
    s = summarize(vals, scale=1e3)
    assert s.n == 257
    assert s.min <= s.median <= s.p90 <= s.p95 <= s.p99 <= s.max
    assert s.min == pytest.approx(vals.min() * 1e3)
    assert s.mean == pytest.approx(vals.mean() * 1e3)
    assert s.cv_pct == pytest.approx(vals.std() / vals.mean() * 100)
    with pytest.raises(ValueError):
        summarize([])


def test_paired_ratio():
    base = np.array([2.0, 4.0, 6.0, 8.0])
    same = paired_ratio(base, base / 2)
    assert (same.median, same.low, same.high, same.n) == (2.0, 2.0, 2.0, 4)
    r = paired_ratio([1.0, 2.0, 3.0, 4.0, 100.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert r.median == 3.0
    assert r.low <= r.median <= r.high
    assert paired_ratio([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == paired_ratio([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_ratio([1.0], [0.0])


# -- fakes: detectors that answer instantly and log what they were asked ------------------------------
class _FakeBackend:
    name = "fake"
    precision = "fp32"

    def __init__(self, label: str, batch_range=(1, None)):
        self.path = f"{label}.fake"
        self._range = batch_range

    @property
    def batch_range(self):
        return self._range

    def describe(self):
        return {"backend": self.name, "path": self.path, "precision": self.precision}

    def close(self):
        pass


class _FakeDetector:
    """Detector-like: records (label, batch) per call; optional barrier proves concurrency."""

    def __init__(
        self, label: str, log: list, batch_range=(1, None), barrier: threading.Barrier | None = None
    ):
        self.label = label
        self.log = log
        self.config = preset("voc300")
        self.backend = _FakeBackend(label, batch_range)
        self.barrier = barrier
        self._lock = threading.Lock()

    def detect_timed(self, images, **kwargs):
        with self._lock:
            self.log.append((self.label, len(images)))
        if self.barrier is not None:
            # Every client thread of a slot must be inside detect at once, or this times out.
            self.barrier.wait(timeout=10)
        stages = {"preprocess": 1e-4, "h2d": 0.0, "compute": 2e-4, "d2h": 0.0, "postprocess": 5e-5}
        return [None] * len(images), {**stages, "total": sum(stages.values())}


def _subjects(labels, log, **kw):
    return [Subject(lab, _FakeDetector(lab, log, **kw), path=f"{lab}.fake") for lab in labels]


def test_schedule_interleaves_round_robin_after_warmup():
    order = interleaved_schedule(["A", "B"], rounds=2, warmup=1)
    assert order == [
        ("warmup", 0, "A"), ("warmup", 0, "B"),
        ("measure", 0, "A"), ("measure", 0, "B"), ("measure", 1, "A"), ("measure", 1, "B"),
    ]  # fmt: skip


def test_runner_calls_engines_interleaved_per_batch():
    log: list = []
    subjects = _subjects(["A", "B", "C"], log)
    settings = Settings(batches=(1, 3), warmup=1, iterations=2)
    ms = run_benchmark(subjects, ["img0", "img1"], settings)
    per_batch = ["A", "B", "C"] * 3  # 1 warm-up + 2 measured rounds
    assert log == [(lab, 1) for lab in per_batch] + [(lab, 3) for lab in per_batch]
    assert [(m.label, m.batch) for m in ms] == [("A", 1), ("B", 1), ("C", 1), ("A", 3), ("B", 3), ("C", 3)]
    for m in ms:
        assert len(m.slots) == 2 and m.warmup_rounds == 1
        assert m.images == 2 * m.batch
        assert m.throughput == pytest.approx(m.images / m.wall)
        assert [s.round for s in m.slots] == [0, 1]
        assert m.stage("compute").tolist() == [2e-4, 2e-4]


def test_threads_share_one_detector_concurrently():
    log: list = []
    threads, block = 3, 2
    barrier = threading.Barrier(threads)
    subjects = _subjects(["A", "B"], log, barrier=barrier)
    ms = run_benchmark(
        subjects, ["x"], Settings(batches=(2,), warmup=0, iterations=2, threads=threads, block=block)
    )
    assert len(log) == 2 * 2 * threads * block
    for m in ms:
        assert len(m.calls) == 2 * threads * block
        assert {c.thread for c in m.calls} == set(range(threads))
        assert m.images == 2 * len(m.calls)
        for slot in m.slots:
            # The slot spans its calls: from the first start to the last end.
            assert slot.wall >= max(c.latency for c in slot.calls)


def test_duration_mode_keeps_rounds_equal_across_engines():
    log: list = []
    ms = run_benchmark(_subjects(["A", "B"], log), ["x"], Settings(warmup=0, iterations=None, duration=1e-6))
    assert len(ms[0].slots) == len(ms[1].slots) >= MIN_ROUNDS
    assert [lab for lab, _ in log] == ["A", "B"] * len(ms[0].slots)


def test_settings_and_batch_profile_are_checked_before_running():
    log: list = []
    with pytest.raises(BenchError, match="batch 4 is outside"):
        run_benchmark(_subjects(["A"], log, batch_range=(1, 2)), ["x"], Settings(batches=(1, 4)))
    assert log == []
    with pytest.raises(BenchError):
        Settings(iterations=5, duration=2.0).validate()
    with pytest.raises(BenchError):
        Settings(threads=0).validate()
    with pytest.raises(BenchError, match="unique"):
        run_benchmark(_subjects(["A", "A"], log), ["x"], Settings())


def test_engine_specs_and_labels():
    assert parse_engine("int8=export/ssd300_int8.onnx") == ("int8", "export/ssd300_int8.onnx")
    assert parse_engine("export/ssd300.onnx") == (None, "export/ssd300.onnx")
    assert parse_engine("./a=b.onnx") == (None, "./a=b.onnx")
    assert unique_labels(["a/m.onnx", "b/m.onnx", "c.pth"], [None, None, "ref"]) == ["m#1", "m#2", "ref"]
    assert backend_options("m.onnx", 2, "cpu") == {"intra_op_threads": 2, "device": "cpu"}
    assert backend_options("m.pth", 2) == {"threads": 2}
    assert backend_options("m.plan", client_threads=4)["contexts"] == 4


# -- report, JSON and CSV schema -----------------------------------------------------------------------
def _report(tmp_path, **kw):
    log: list = []
    subjects = _subjects(["A", "B"], log)
    settings = Settings(batches=(1, 2), warmup=1, iterations=3)
    ms = run_benchmark(subjects, ["x"], settings)
    return build_report(subjects, ms, settings, command=["ssd-bench", "..."], **kw), ms


def test_report_schema(tmp_path):
    report, ms = _report(tmp_path, baseline="B")
    assert report["schema"] == SCHEMA
    assert report["baseline"] == "B"
    h = report["header"]
    for key in ("machine", "versions", "threads", "settings", "precision", "command", "inputs"):
        assert key in h
    assert h["machine"]["usable_cpus"] >= 1 and h["machine"]["cpu"]
    assert "numpy" in h["versions"]
    assert [e["label"] for e in report["engines"]] == ["A", "B"]
    macs = report["engines"][0]["macs_per_image"]
    assert round(macs / 1e9, 1) == 31.4
    assert len(report["results"]) == 4
    for r, m in zip(report["results"], ms):
        assert (r["engine"], r["batch"]) == (m.label, m.batch)
        lat = r["latency_ms"]
        assert lat["n"] == r["calls"] == 3 and r["images"] == 3 * r["batch"]
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert len(r["samples_ms"]) == 3 and len(r["round_walls_ms"]) == 3
        assert r["throughput_ips"] == pytest.approx(r["images"] / r["wall_s"])
        assert r["gflops"] == pytest.approx(2 * macs * r["throughput_ips"] / 1e9)
        assert set(r["stages_ms"]) == set(STAGES)
        assert r["stages_ms"]["compute"]["mean"] == pytest.approx(0.2)
        vs = r["vs_baseline"]
        assert vs["baseline"] == "B"
        if r["engine"] == "B":
            assert vs["throughput_ratio"] == 1.0
            assert vs["speedup"] == {"median": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    # Few calls are flagged so nobody reads p99 of 3 samples as a tail latency.
    assert any("only 3 timed calls" in w for w in report["warnings"])


def test_markdown_has_the_command_header_and_every_result(tmp_path):
    from ssd_deploy.benchmark import markdown

    report, _ = _report(tmp_path, baseline="A")
    md = markdown(report)
    assert "`ssd-bench ...`" in md and report["header"]["machine"]["cpu"] in md
    rows = [line for line in md.splitlines() if line.startswith(("| A |", "| B |"))]
    assert len(rows) == 2 + 2 * 4  # engines table, results and stages for 2 engines x 2 batches
    assert "1.00x [1.00, 1.00]" in md  # the baseline against itself


def test_unknown_baseline_is_an_error(tmp_path):
    with pytest.raises(BenchError, match="baseline"):
        _report(tmp_path, baseline="nope")


def test_unstable_results_are_flagged(tmp_path):
    report, _ = _report(tmp_path, cv_threshold=-1.0)
    assert all(r["unstable"] for r in report["results"])
    assert any("unstable" in w for w in report["warnings"])


def test_json_and_csv_files(tmp_path):
    report, _ = _report(tmp_path)
    write_json(report, tmp_path / "r.json")
    write_csv(report, tmp_path / "r.csv")
    # Strict JSON: no NaN/Infinity tokens (h2d/d2h are all zero for the fake backend).
    back = json.loads(
        (tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}")
    )
    assert back["results"][0]["stages_ms"]["h2d"]["cv_pct"] == 0.0
    assert back["results"][0]["latency_ms"] == report["results"][0]["latency_ms"]
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == list(CSV_COLUMNS)
    assert [(r["engine"], int(r["batch"])) for r in rows] == [("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    for row, r in zip(rows, csv_rows(report)):
        assert float(row["throughput_ips"]) == pytest.approx(r["throughput_ips"])
        assert float(row["lat_p99_ms"]) == pytest.approx(r["lat_p99_ms"])
    assert not list(tmp_path.glob(".r.*"))  # no temporary files left behind


# -- the CLI on real (tiny) ONNX files ---------------------------------------------------------------------
def _tiny_onnx(path: Path, batch: int | str = "batch") -> Path:
    """An ONNX file with the ssd_deploy I/O contract whose network is a few cheap ops."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    cfg = preset("voc300")
    p, c, s = cfg.num_priors, cfg.num_classes, cfg.size
    logits = np.zeros((1, p, c), np.float32)
    logits[..., 0] = 10.0  # mostly background: Detect has little to do
    logits[0, :8, 1] = 14.0
    inits = [
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.zeros((1, p, 4), np.float32), "loc_const"),
        numpy_helper.from_array(logits, "logits"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["m"], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["m3"]),
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "loc_const"], ["loc"]),
        helper.make_node("Add", ["z", "logits"], ["l"]),
        helper.make_node("Softmax", ["l"], ["conf"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_ssd",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, s, s])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, [batch, p, 4]),
         helper.make_tensor_value_info("conf", TensorProto.FLOAT, [batch, p, c])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {METADATA_KEY: cfg.to_json(), "ssd_deploy.precision": "fp32"})
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return _tiny_onnx(d / "tiny.onnx"), _tiny_onnx(d / "static1.onnx", batch=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(64, 48), (40, 80)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"p{i}.png")
    return d


def _main(args):
    from ssd_deploy.cli.bench import main

    return main([str(a) for a in args])


def test_cli_compares_engines_and_writes_outputs(tiny, photos, tmp_path, capsys):
    dyn, static = tiny
    out = tmp_path / "out"
    out.mkdir()
    args = ["--engine", f"a={dyn}", "--engine", f"b={static}", "--batch", "1", "--warmup", "1",
            "--iterations", "3", "--images", photos, "--baseline", "b", "--device", "cpu",
            "--json", out / "r.json", "--csv", out / "r.csv"]  # fmt: skip
    assert _main(args) == 0
    text = capsys.readouterr().out
    assert "img/s" in text and "decode+NMS" in text and "baseline b" in text
    report = json.loads((out / "r.json").read_text())
    assert report["baseline"] == "b"
    assert [e["batch_range"] for e in report["engines"]] == [[1, None], [1, 1]]
    assert report["engines"][0]["backend"] == "onnxruntime"
    assert report["header"]["inputs"]["count"] == 2
    assert report["header"]["command"][0] == "ssd-bench"
    for r in report["results"]:
        assert r["calls"] == 3
        # Stages are really measured by the Detector: preprocessing a photo takes time.
        assert r["stages_ms"]["preprocess"]["min"] > 0 and r["stages_ms"]["compute"]["min"] > 0
    with open(out / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["engine"] for r in rows] == ["a", "b"]


def test_cli_threads_and_files(tiny, photos, tmp_path):
    dyn, _ = tiny
    out = tmp_path / "t.json"
    assert _main(["--engine", dyn, "--batch", "2", "--clients", "2", "--iterations", "2", "--warmup", "0",
                  "--images", photos, "--from-files", "--quiet", "--json", out]) == 0  # fmt: skip
    r = json.loads(out.read_text())
    assert r["header"]["threads"]["clients"] == 2
    assert r["results"][0]["calls"] == 4 and r["results"][0]["images"] == 8
    assert r["header"]["inputs"]["decoded_before_timing"] is False


def test_cli_plot(tiny, photos, tmp_path):
    pytest.importorskip("matplotlib")
    dyn, _ = tiny
    png = tmp_path / "b.png"
    assert _main(["--engine", dyn, "--batch", "1,2", "--iterations", "2", "--warmup", "0",
                  "--images", photos, "--quiet", "--plot", png]) == 0  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def test_cli_unknown_file_type(tmp_path, capsys):
    f = tmp_path / "model.xyz"
    f.write_bytes(b"junk")
    assert _main(["--engine", f]) == 2
    assert "model.xyz" in _one_line_error(capsys)


def test_cli_missing_file(tmp_path, capsys):
    assert _main(["--engine", tmp_path / "nope.onnx"]) == 2
    assert "nope.onnx" in _one_line_error(capsys)


def test_cli_plan_without_tensorrt_or_gpu(tmp_path, capsys):
    f = tmp_path / "ssd300_fp16.plan"
    f.write_bytes(b"not a plan")
    assert _main(["--engine", f]) == 2
    assert "ssd300_fp16.plan" in _one_line_error(capsys)


def test_cli_batch_outside_profile(tiny, photos, capsys):
    _, static = tiny
    assert _main(["--engine", static, "--batch", "1,2", "--images", photos]) == 2
    err = _one_line_error(capsys)
    assert "static1.onnx" in err and "batch 2" in err


def test_cli_bad_baseline_and_output(tiny, photos, tmp_path, capsys):
    dyn, _ = tiny
    assert _main(["--engine", dyn, "--baseline", "other", "--images", photos]) == 2
    assert "other" in _one_line_error(capsys)
    assert _main(["--engine", dyn, "--json", tmp_path / "no" / "dir" / "r.json"]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_cli_plot_without_matplotlib(tiny, tmp_path, capsys, monkeypatch):
    import sys

    dyn, _ = tiny
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _main(["--engine", dyn, "--plot", tmp_path / "p.png"]) == 2
    assert "ssd_deploy[bench]" in _one_line_error(capsys)
    assert not (tmp_path / "p.png").exists()


def test_bench_and_cost_import_neither_torch_nor_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys, ssd_deploy.cli.bench, ssd_deploy.cost, ssd_deploy.benchmark; "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
