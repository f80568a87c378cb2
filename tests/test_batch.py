"""Dataset mode of ``ssd-detect`` for real: 300 generated images, a cheap ONNX model with the SSD
contract, the in-process path and Ray Data with 2 actors on a private loopback Ray.

Ray starts once for this file (10-30 s on a small shared machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="pyarrow not installed (pip install 'ssd_deploy[batch]')")
pytest.importorskip("onnx", reason="onnx not installed (dev extra)")

from batch_tiny import make_images, tiny_onnx

from ssd_deploy.batch import read_results
from ssd_deploy.batch.io import list_inputs

N_IMAGES = 300
MIN_SCORE = 0.05
CORRUPT = ("img0150.jpg", "img0151.png")  # in the middle of the sorted list
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    engine = tiny_onnx(d / "tiny.onnx")
    make_images(d / "imgs", N_IMAGES)
    (d / "imgs" / CORRUPT[0]).write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    png = (d / "imgs" / CORRUPT[1]).read_bytes()
    (d / "imgs" / CORRUPT[1]).write_bytes(png[: len(png) // 2])  # truncated
    return d, engine


@pytest.fixture(scope="module")
def expected(data):
    """``Detector.detect`` image by image: what every row must equal."""
    from ssd_deploy.preprocess import ImageError
    from ssd_deploy.runtime import Detector

    d, engine = data
    out = {}
    with Detector.load(engine, device="cpu") as det:
        for p in list_inputs(d / "imgs"):
            try:
                out[p] = det.detect(p).above(MIN_SCORE)
            except ImageError:
                out[p] = None
    return out


def _check_rows(table, expected) -> None:
    rows = table.to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "duplicate rows"
    assert set(paths) == set(expected)
    for r in rows:
        want = expected[r["path"]]
        if want is None:
            assert r["error"] and Path(r["path"]).name in r["error"]
            assert r["boxes"] == [] and r["width"] is None
            continue
        assert r["error"] is None
        assert (r["width"], r["height"]) == want.image_size
        assert len(r["scores"]) == len(want)
        # Batched inference may differ from single-image inference in the last float bits, which
        # can swap equal-looking scores: compare per class, best first.
        got = sorted(
            zip(r["class_ids"], r["scores"], r["boxes"], r["class_names"]), key=lambda t: (t[0], -t[1])
        )
        ref = sorted(
            zip(want.class_ids.tolist(), want.scores.tolist(), want.boxes.tolist(), want.class_names),
            key=lambda t: (t[0], -t[1]),
        )
        for (gc, gs, gb, gn), (wc, ws, wb, wn) in zip(got, ref):
            assert (gc, gn) == (wc, wn)
            assert gs == pytest.approx(ws, abs=1e-5)
            np.testing.assert_allclose(gb, wb, atol=1e-3)


def _cli(args) -> int:
    from ssd_deploy.cli.detect import main

    try:
        return main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        return int(e.code)


# -- inputs -----------------------------------------------------------------------------------------
def test_list_inputs_folder_glob_and_list(tmp_path):
    make_images(tmp_path / "a" / "b", 3)
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    found = list_inputs(tmp_path / "a")
    assert [Path(p).name for p in found] == ["img0000.jpg", "img0001.png", "img0002.jpg"]
    assert list_inputs(str(tmp_path / "a" / "**" / "*.png")) == [found[1]]
    lst = tmp_path / "a" / "list.txt"
    lst.write_text(f"# images\nb/img0002.jpg\n\n{found[0]}\nb/img0002.jpg\nb/missing.jpg\n")
    assert list_inputs(lst) == [found[2], found[0], str(tmp_path / "a" / "b" / "missing.jpg")]


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------
def test_bad_inputs_exit_2_and_write_nothing(data, tmp_path, capsys):
    d, engine = data
    imgs = d / "imgs"
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken.parquet").mkdir()
    cases = [
        (["--input", imgs, "--output", tmp_path / "missing" / "o.parquet"], "does not exist"),
        (["--input", imgs, "--output", tmp_path / "o.csv"], "unknown output type"),
        (["--input", tmp_path / "empty", "--output", tmp_path / "o.parquet"], "no images"),
        (["--input", str(imgs / "*.gif"), "--output", tmp_path / "o.jsonl"], "matches no image"),
        (["--input", tmp_path / "nothing", "--output", tmp_path / "o.jsonl"], "no such file or folder"),
        (["--input", imgs, "--output", tmp_path / "taken.parquet"], "--resume"),
        (["--input", imgs, "--output", tmp_path / "o.parquet", "--actors", "0"], "must be >= 1"),
        (["--input", imgs, "--output", tmp_path / "o.parquet", "--ray", "--engine", tmp_path / "x.bin"],
         "no such engine file"),
    ]  # fmt: skip
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        cases.append((["--input", imgs, "--output", ro / "o.parquet"], "not writable"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, needle in cases:
        if "--engine" not in args:
            args = ["--engine", engine] + args
        assert _cli(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[-1], (args, err)
        assert len(err) == 1 or err[0].startswith("usage:"), (args, err)  # argparse adds its usage
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# -- in-process -------------------------------------------------------------------------------------
def test_in_process_rows_equal_detector(data, expected, tmp_path, capsys):
    d, engine = data
    out = tmp_path / "dets.parquet"
    rc = _cli(["--engine", engine, "--device", "cpu", "--input", d / "imgs", "--output", out,
               "--min-score", MIN_SCORE, "--batch", 8, "--rows-per-part", 128, "--quiet"])  # fmt: skip
    assert rc == 0
    assert "wrote 300 rows (2 errors)" in capsys.readouterr().out
    assert len(list(out.glob("part-*.parquet"))) == 3  # 128 + 128 + 44
    assert json.loads((out / "_ssd_detect.json").read_text())["min_score"] == MIN_SCORE
    _check_rows(read_results(out), expected)
    # Resuming a finished run does nothing; resuming with other settings is refused.
    assert _cli(["--engine", engine, "--input", d / "imgs", "--output", out, "--min-score", MIN_SCORE,
                 "--resume", "-q"]) == 0  # fmt: skip
    assert "wrote 0 rows (0 errors, 300 skipped" in capsys.readouterr().out
    assert _cli(["--engine", engine, "--input", d / "imgs", "--output", out, "--resume", "-q"]) == 2
    assert "different min_score" in capsys.readouterr().err
    assert len(list(out.glob("part-*"))) == 3


def test_in_process_path_does_not_import_torch(data, tmp_path):
    d, engine = data
    code = f"""
import sys
from ssd_deploy.batch import RunOptions, run
s = run(RunOptions({str(engine)!r}, {str(d / "imgs" / "img0000.jpg")!r}, {str(tmp_path / "o.jsonl")!r},
                   backend_options={{"device": "cpu"}}))
assert s.written == 1, s
print("TORCH_MODULES", sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "TORCH_MODULES []" in out.stdout


# -- Ray Data -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from ssd_deploy.raylocal import start_ray

    owns = start_ray(None, num_cpus=3, object_store_bytes=256 * 1024 * 1024)
    try:
        yield ray
    finally:
        if owns:
            ray.shutdown()


def test_local_ray_binds_loopback(local_ray):
    assert local_ray.util.get_node_ip_address() == "127.0.0.1"


def test_resume_after_interrupt_on_ray_with_two_actors(data, expected, local_ray, tmp_path):
    d, engine = data
    out = tmp_path / "dets.jsonl"
    # An in-process run, terminated after a few parts: what it finished stays, in whole parts.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "ssd_deploy.cli.detect", "--engine", str(engine), "--device", "cpu",
           "--input", str(d / "imgs"), "--output", str(out), "--min-score", str(MIN_SCORE),
           "--batch", "2", "--rows-per-part", "10", "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.jsonl"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "terminated" in err
    first = read_results(out)
    assert 30 <= first.num_rows < N_IMAGES
    (out / ".part-x.jsonl.abc.tmp").write_text('{"path": "half')  # as a SIGKILLed run would leave
    # Resume on Ray with 2 actors: the rest, once each.
    rc = _cli(["--engine", engine, "--device", "cpu", "--input", d / "imgs", "--output", out,
               "--min-score", MIN_SCORE, "--ray", "--actors", 2, "--batch", 8, "--resume", "-q"])  # fmt: skip
    assert rc == 0
    assert not list(out.glob(".*.tmp"))
    _check_rows(read_results(out), expected)


def test_more_gpus_than_the_cluster_has_is_bad_input(data, local_ray, tmp_path, capsys):
    d, engine = data
    out = tmp_path / "dets.parquet"
    rc = _cli(["--engine", engine, "--input", d / "imgs", "--output", out, "--ray", "--actors", 2,
               "--gpus-per-actor", 1, "-q"])  # fmt: skip
    assert rc == 2
    assert "2 actor(s) x 1 GPU need 2 GPUs but the Ray cluster has 0" in capsys.readouterr().err
    assert not out.exists()


def test_detect_dataset_returns_a_ray_dataset(data, expected, local_ray):
    from ssd_deploy.batch import detect_dataset

    d, engine = data
    paths = list_inputs(d / "imgs")[140:160]
    ds = detect_dataset(engine, paths, actors=2, batch_size=4, min_score=MIN_SCORE,
                        backend_options={"device": "cpu"})  # fmt: skip
    import pyarrow as pa

    table = pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)))
    assert table.num_rows == 20 and table.column("error").null_count == 18
    _check_rows(table, {p: expected[p] for p in paths})


@pytest.mark.slow  # a second driver process joining the Ray, twice: ~30 s more
def test_cli_joins_a_running_ray_by_address_and_stops_cleanly_on_sigterm(data, expected, local_ray, tmp_path):
    d, engine = data
    paths = list_inputs(d / "imgs")[100:200]
    (tmp_path / "list.txt").write_text("\n".join(paths) + "\n")
    address = local_ray.get_runtime_context().gcs_address
    out = tmp_path / "dets.parquet"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "ssd_deploy.cli.detect", "--engine", str(engine), "--device", "cpu",
           "--input", str(tmp_path / "list.txt"), "--output", str(out), "--min-score", str(MIN_SCORE),
           "--ray", address, "--actors", "1", "--batch", "2", "--rows-per-part", "10", "-q"]  # fmt: skip
    # SIGTERM mid-run: Ray's driver installs an aborting SIGTERM handler; ours must win (exit 130,
    # whole parts only, the joined cluster left running).
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not list(out.glob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "error: terminated" in err
    assert 10 <= read_results(out).num_rows < len(paths)
    assert local_ray.cluster_resources().get("CPU", 0) > 0
    done = subprocess.run(
        cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped as already done" in done.stdout
    table = read_results(out)
    # The corrupt pair (img0150/img0151) is an error row once, in whichever run reached it.
    assert table.num_rows == len(paths) and table.column("error").null_count == len(paths) - 2
    _check_rows(table, {p: expected[p] for p in paths})
