"""The plan builder and ``ssd-build`` against the fake TensorRT / CUDA layer,
plus the one-line "no TensorRT / no GPU" behaviour with the real (GPU-less) environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trt_fakes import PLAN_MAGIC, FakeGpu, cudaError_t, install_fake
from trt_onnx import make_ssd_like_onnx

from ssd_deploy.cli import build as build_cli
from ssd_deploy.config import SSDConfig, preset
from ssd_deploy.contract import sha256_file
from ssd_deploy.tensorrt import loader
from ssd_deploy.tensorrt.builder import (
    BatchProfile,
    BuildError,
    BuildOptions,
    LineReporter,
    build_plan,
    parse_batch_profiles,
    read_onnx_info,
)
from ssd_deploy.tensorrt.manifest import manifest_path, read_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def voc():
    return preset("voc300")


@pytest.fixture(scope="module")
def onnx_fp16(tmp_path_factory, voc) -> Path:
    return make_ssd_like_onnx(tmp_path_factory.mktemp("onnx") / "ssd300_fp16.onnx", voc, precision="fp16")


def _plan(fake_log) -> dict:
    return fake_log.built_configs[-1]


# -- --batch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("1:8:32", [(1, 8, 32)]),
        ("4", [(4, 4, 4)]),
        (" 1:1:1 , 8:16:32", [(1, 1, 1), (8, 16, 32)]),
    ],
)
def test_parse_batch_profiles(text, expected):
    assert [tuple(p) for p in parse_batch_profiles(text)] == expected


@pytest.mark.parametrize("text", ["", "1:8", "8:4:16", "0:1:1", "1:x:4", "1:2:3,", "1:2:3:4"])
def test_parse_batch_profiles_rejects(text):
    with pytest.raises(ValueError) as e:
        parse_batch_profiles(text)
    assert "\n" not in str(e.value)


# -- reading the export -------------------------------------------------------------------------------
def test_read_onnx_info(onnx_fp16, voc):
    info = read_onnx_info(onnx_fp16)
    assert info.config == voc
    assert (info.precision, info.input_name, info.input_shape, info.static_batch) == (
        "fp16",
        "images",
        (3, 300, 300),
        None,
    )
    assert info.recipe == {"precision": "fp16", "test": True}
    assert info.sha256 == sha256_file(onnx_fp16)
    assert {"loc", "conf", "priors"} <= set(info.output_names)


def test_read_onnx_info_infers_precision_without_metadata(tmp_path, voc):
    p = make_ssd_like_onnx(tmp_path / "q.onnx", voc, precision="int8", precision_metadata=False)
    assert read_onnx_info(p).precision == "int8"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metadata": False}, "no 'ssd_deploy.config' in its metadata"),
        ({"config": "voc512"}, "the config says [3, 512, 512]"),
    ],
)
def test_read_onnx_info_errors(tmp_path, voc, kwargs, message):
    cfg = preset(kwargs.pop("config")) if "config" in kwargs else voc
    p = make_ssd_like_onnx(tmp_path / "m.onnx", voc, **kwargs)
    if cfg is not voc:  # metadata for a 512 model on a 300 graph
        import onnx

        m = onnx.load(str(p))
        for prop in m.metadata_props:
            if prop.key == "ssd_deploy.config":
                prop.value = cfg.to_json()
        onnx.save(m, str(p))
    with pytest.raises(BuildError) as e:
        read_onnx_info(p)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_read_onnx_info_missing_and_garbage(tmp_path):
    with pytest.raises(BuildError, match="no such ONNX file"):
        read_onnx_info(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf at all" * 10)
    with pytest.raises(BuildError, match="not a readable ONNX model"):
        read_onnx_info(bad)


# -- building (fake TensorRT) -------------------------------------------------------------------------
def test_build_writes_plan_and_manifest(fake, onnx_fp16, tmp_path, voc):
    out = tmp_path / "engines" / "x.plan"
    opts = BuildOptions(onnx=onnx_fp16, profiles=parse_batch_profiles("1:4:8,16:16:32"), output=out,
                        workspace_mib=512, opt_level=4)  # fmt: skip
    res = build_plan(opts, log=lambda m: None)
    assert res.plan == out and out.read_bytes().startswith(PLAN_MAGIC)
    assert res.manifest_file == manifest_path(out) == tmp_path / "engines" / "x.plan.json"
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.plan", "x.plan.json"]  # no temp files left
    plan = json.loads(out.read_bytes()[len(PLAN_MAGIC) :])
    assert plan["profiles"] == [[1, 4, 8], [16, 16, 32]]  # min/opt/max per --batch range
    built = _plan(fake.log)
    assert built["opt_level"] == 4 and built["pools"] == {0: 512 << 20}
    assert built["network_flags"] == 0  # strongly typed is implicit on 11; no deprecated flag
    assert built["flags"] == [] and built["hw"] == 0

    m = read_manifest(out)
    assert (m.tensorrt_version, m.gpu_name, m.compute_capability) == ("11.4.0.106", "NVIDIA Fake GPU", "8.9")
    assert m.onnx_sha256 == sha256_file(onnx_fp16) and m.plan_sha256 == sha256_file(out)
    assert (m.precision, m.recipe) == ("fp16", {"precision": "fp16", "test": True})
    assert m.profiles == [(1, 4, 8), (16, 16, 32)]
    assert SSDConfig.from_dict(m.config) == voc and m.input_shape == (3, 300, 300)
    assert m.output_names == ["loc", "conf"] and plan["outputs"] == ["loc", "conf"]  # constant priors dropped
    assert m.build_flags["workspace_mib"] == 512 and m.build_flags["builder_optimization_level"] == 4
    assert m.build_date.endswith("+00:00") and m.build_seconds >= 0


def test_build_flags_for_compatibility(fake, onnx_fp16, tmp_path):
    opts = BuildOptions(
        onnx=onnx_fp16, output=tmp_path / "c.plan", version_compatible=True, hardware_compat="ampere+"
    )
    build_plan(opts, log=lambda m: None)
    built = _plan(fake.log)
    assert built["flags"] == [int(fake.trt.BuilderFlag.VERSION_COMPATIBLE)]
    assert built["hw"] == int(fake.trt.HardwareCompatibilityLevel.AMPERE_PLUS)
    m = read_manifest(tmp_path / "c.plan")
    assert m.version_compatible and m.hardware_compat == "ampere+"


def test_extra_outputs_can_be_kept(fake, onnx_fp16, tmp_path):
    res = build_plan(
        BuildOptions(onnx=onnx_fp16, output=tmp_path / "k.plan", keep_extra_outputs=True), log=print
    )
    assert res.manifest.output_names == ["loc", "conf", "priors"]


def test_ampere_plus_needs_an_ampere_gpu_to_build(monkeypatch, onnx_fp16, tmp_path):
    fake = install_fake(monkeypatch, FakeGpu(name="Tesla T4", major=7, minor=5))
    with pytest.raises(BuildError, match="Ampere or newer"):
        build_plan(
            BuildOptions(onnx=onnx_fp16, output=tmp_path / "t.plan", hardware_compat="ampere+"), log=print
        )
    assert "Builder" not in fake.log.constructed
    assert not (tmp_path / "t.plan").exists()


def test_tensorrt_10_gets_the_strongly_typed_flag(monkeypatch, onnx_fp16, tmp_path):
    fake = install_fake(monkeypatch, version="10.13.0.35")
    build_plan(BuildOptions(onnx=onnx_fp16, output=tmp_path / "t10.plan"), log=lambda m: None)
    assert _plan(fake.log)["network_flags"] == 1 << int(fake.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def test_default_output_is_engines_stem_plan(fake, onnx_fp16, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = build_plan(BuildOptions(onnx=onnx_fp16), log=lambda m: None)
    assert (
        res.plan == Path("engines") / "ssd300_fp16.plan"
        and (tmp_path / "engines" / "ssd300_fp16.plan.json").is_file()
    )


def test_parser_errors_name_node_and_operator(fake, tmp_path, voc):
    onnx_path = make_ssd_like_onnx(tmp_path / "odd.onnx", voc, extra_op="FakeUnsupportedOp")
    with pytest.raises(BuildError) as e:
        build_plan(BuildOptions(onnx=onnx_path, output=tmp_path / "odd.plan"), log=lambda m: None)
    msg = str(e.value)
    assert "'mystery_node' (FakeUnsupportedOp)" in msg and "No importer registered" in msg and "\n" not in msg
    assert not list(tmp_path.glob("*.plan*"))


def test_static_batch_export_only_takes_its_batch(fake, tmp_path, voc):
    p = make_ssd_like_onnx(tmp_path / "b4.onnx", voc, static_batch=4)
    with pytest.raises(BuildError, match="fixed to 4"):
        build_plan(
            BuildOptions(onnx=p, output=tmp_path / "b4.plan", profiles=[BatchProfile(1, 4, 8)]), log=print
        )
    build_plan(
        BuildOptions(onnx=p, output=tmp_path / "b4.plan", profiles=[BatchProfile(4, 4, 4)]),
        log=lambda m: None,
    )


def test_timing_cache_round_trip(fake, onnx_fp16, tmp_path):
    cache = tmp_path / "timing.cache"
    notes: list[str] = []
    opts = BuildOptions(onnx=onnx_fp16, output=tmp_path / "a.plan", timing_cache=cache)
    r1 = build_plan(opts, log=notes.append)
    assert r1.timing_cache == cache and cache.read_bytes() == b"FAKECACHE|NVIDIA Fake GPU/8.9|1"
    assert r1.manifest.build_flags["timing_cache_reused"] is False
    r2 = build_plan(opts, log=notes.append)
    assert r2.manifest.build_flags["timing_cache_reused"] is True
    assert cache.read_bytes() == b"FAKECACHE|NVIDIA Fake GPU/8.9|2"  # loaded, extended, saved
    assert not any("timing cache" in n for n in notes)


@pytest.mark.parametrize(
    "content, note",
    [
        (b"FAKECACHE|Other GPU/7.5|9", "another GPU or TensorRT version"),
        (b"garbage", "not a TensorRT timing cache"),
    ],
)
def test_timing_cache_mismatch_starts_fresh(fake, onnx_fp16, tmp_path, content, note):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(content)
    notes: list[str] = []
    res = build_plan(
        BuildOptions(onnx=onnx_fp16, output=tmp_path / "a.plan", timing_cache=cache), log=notes.append
    )
    assert any(note in n for n in notes), notes
    assert res.manifest.build_flags["timing_cache_reused"] is False
    assert cache.read_bytes() == b"FAKECACHE|NVIDIA Fake GPU/8.9|1"  # replaced by this GPU's cache


def test_progress_monitor_feeds_the_reporter(fake, onnx_fp16, tmp_path):
    lines: list[str] = []
    build_plan(
        BuildOptions(onnx=onnx_fp16, output=tmp_path / "p.plan"),
        reporter=LineReporter(lines.append),
        log=lambda m: None,
    )
    assert lines[0] == "Building engine (2 steps)" and lines[-1].startswith("Building engine done in ")
    lines.clear()
    build_plan(BuildOptions(onnx=onnx_fp16, output=tmp_path / "p.plan"),
               reporter=LineReporter(lines.append, verbose=True), log=lambda m: None)  # fmt: skip
    assert "  Tactic selection (3 steps)" in lines


def test_failed_build_keeps_the_previous_plan(fake, onnx_fp16, tmp_path, monkeypatch):
    out = tmp_path / "keep.plan"
    build_plan(BuildOptions(onnx=onnx_fp16, output=out), log=lambda m: None)
    before = out.read_bytes(), manifest_path(out).read_bytes()
    monkeypatch.setattr(fake.trt.Builder, "build_serialized_network", lambda self, network, config: None)
    with pytest.raises(BuildError, match="could not build the engine"):
        build_plan(BuildOptions(onnx=onnx_fp16, output=out), log=lambda m: None)
    assert (out.read_bytes(), manifest_path(out).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# -- no GPU / no TensorRT ----------------------------------------------------------------------------------
def test_no_gpu_is_one_line_and_builds_nothing(monkeypatch, onnx_fp16, tmp_path, capsys):
    fake = install_fake(
        monkeypatch, FakeGpu(device_count=0, device_count_error=int(cudaError_t.cudaErrorNoDevice))
    )
    rc = build_cli.main(["--onnx", str(onnx_fp16), "--output", str(tmp_path / "n.plan"), "--no-timing-cache"])
    err = capsys.readouterr().err.strip()
    assert (
        rc == 2
        and len(err.splitlines()) == 1
        and "no usable NVIDIA GPU" in err
        and "cudaErrorNoDevice" in err
    )
    assert fake.log.constructed == []  # not even a logger
    assert not list(tmp_path.iterdir())


def test_missing_tensorrt_is_one_line(monkeypatch, onnx_fp16, tmp_path, capsys):
    def missing():
        raise loader.TensorRTUnavailable("TensorRT is not available (tensorrt: no module); pip install ...")

    monkeypatch.setattr(loader, "load_tensorrt", missing)
    rc = build_cli.main(["--onnx", str(onnx_fp16), "--output", str(tmp_path / "n.plan")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "TensorRT is not available" in err


def test_cli_in_the_real_environment_without_a_gpu(onnx_fp16, tmp_path):
    """No fakes: whatever is missing here (TensorRT libraries, driver, GPU) is one line, exit 2."""
    try:
        tensorrt_usable = bool(loader.load_tensorrt()) and bool(loader.load_cudart().cudaGetDeviceCount()[1])
    except Exception:
        tensorrt_usable = False
    if tensorrt_usable:
        pytest.skip("TensorRT and a GPU are usable here")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "ssd_deploy.cli.build", "--onnx", str(onnx_fp16),
         "--output", str(tmp_path / "r.plan")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert "TensorRT is not available" in lines[0] or "no usable NVIDIA GPU" in lines[0]
    assert not list(tmp_path.glob("*.plan*"))


# -- CLI -------------------------------------------------------------------------------------------------
def test_cli_builds_and_reports(fake, onnx_fp16, tmp_path, capsys):
    out = tmp_path / "cli.plan"
    rc = build_cli.main(["--onnx", str(onnx_fp16), "--batch", "1:2:4", "--output", str(out),
                         "--opt-level", "2", "--workspace", "256", "--progress", "lines"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith(f"built {out} ") and " s: fp16, TensorRT 11.4.0.106" in captured.out
    assert "Building engine (2 steps)" in captured.err
    assert (tmp_path / "timing.cache").is_file()  # default: beside the plan
    assert read_manifest(out).profiles == [(1, 2, 4)]


@pytest.mark.parametrize(
    "args, rc, text",
    [
        (["--batch", "8:1:4"], 2, "--batch: batch profile '8:1:4' needs 1 <= min <= opt <= max"),
        (["--output", "x.engine"], 2, "must end in .plan"),
        (["--workspace", "0"], 2, "--workspace"),
    ],
)
def test_cli_errors(fake, onnx_fp16, tmp_path, capsys, args, rc, text):
    assert build_cli.main(["--onnx", str(onnx_fp16), *args]) == rc
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1


def test_cli_bad_onnx_exit_2(fake, tmp_path, capsys):
    assert build_cli.main(["--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err


def test_cli_dry_run_needs_no_tensorrt(monkeypatch, onnx_fp16, tmp_path, capsys):
    def boom():
        raise AssertionError("dry run must not load TensorRT")

    monkeypatch.setattr(loader, "load_tensorrt", boom)
    monkeypatch.setattr(loader, "load_cudart", boom)
    assert build_cli.main(["--onnx", str(onnx_fp16), "--dry-run", "--output", str(tmp_path / "d.plan")]) == 0
    out = capsys.readouterr().out
    assert "ssd300_voc fp16" in out and "batch profiles 1:8:32" in out
    assert not (tmp_path / "d.plan").exists()
