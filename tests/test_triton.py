"""Triton model repository generator: configs checked with Triton's own schema, ensemble wiring,
and the Python-backend model run in-process against the direct Detector result."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import ssd_deploy.triton as gen
from ssd_deploy.cli.triton import main as triton_main
from ssd_deploy.config import preset
from ssd_deploy.triton import RepoOptions, Sym, TritonError

pytest.importorskip("tritonclient", reason="tritonclient not installed (serve extra)")
from google.protobuf import json_format  # noqa: E402

pb2 = gen.load_model_config_schema()


# -- helpers ----------------------------------------------------------------------------------------


def _fake_plan(tmp_path: Path, profiles=((1, 8, 32),), outputs=("loc", "conf"), config=None) -> Path:
    """A stand-in plan (bytes are never read) with a manifest written by the TensorRT helper's class."""
    from ssd_deploy.tensorrt.manifest import PlanManifest, manifest_path, write_manifest

    cfg = config or preset("voc300")
    plan = tmp_path / "ssd300_fp16.plan"
    plan.write_bytes(b"not a real engine")
    m = PlanManifest(
        tensorrt_version="11.4.0", gpu_name="NVIDIA H100", compute_capability="9.0",
        onnx_path="export/ssd300.onnx", onnx_sha256="0" * 64, plan_sha256="1" * 64, precision="fp16",
        profiles=[tuple(p) for p in profiles], input_name="images", input_shape=(3, cfg.size, cfg.size),
        output_names=list(outputs), config=cfg.to_dict(),
    )  # fmt: skip
    write_manifest(m, manifest_path(plan))
    return plan


def _engine_cfg(repo: Path, name: str = "ssd_engine"):
    return gen.parse_config((repo / name / "config.pbtxt").read_text())


# -- the text format ------------------------------------------------------------------------------


def test_pbtxt_writer_round_trips_through_triton_schema():
    cfg = {
        "name": "m", "platform": "tensorrt_plan", "max_batch_size": 4,
        "input": [{"name": "x", "data_type": Sym("TYPE_FP32"), "dims": [3, 8, 8]}],
        "dynamic_batching": {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 100},
        "instance_group": [{"count": 2, "kind": Sym("KIND_GPU"), "gpus": [0, 1], "profile": ["1"]}],
        "parameters": [{"key": "a b", "value": {"string_value": 'quote " and \\ slash'}}],
    }  # fmt: skip
    msg = gen.parse_config(gen.to_pbtxt(cfg))
    assert msg.max_batch_size == 4 and list(msg.input[0].dims) == [3, 8, 8]
    assert msg.input[0].data_type == pb2.TYPE_FP32
    assert list(msg.dynamic_batching.preferred_batch_size) == [2, 4]
    g = msg.instance_group[0]
    assert g.kind == pb2.ModelInstanceGroup.KIND_GPU and list(g.gpus) == [0, 1] and list(g.profile) == ["1"]
    assert msg.parameters["a b"].string_value == 'quote " and \\ slash'


def test_parse_config_rejects_unknown_fields():
    with pytest.raises(TritonError, match="max_batch"):
        gen.parse_config('name: "m" max_batch: 8', "x/config.pbtxt")


# -- TensorRT plans (synthetic plan + manifest) -------------------------------------------------------


def test_plan_repository_uses_profile_and_instance_groups(tmp_path):
    plan = _fake_plan(tmp_path, profiles=[(1, 8, 32)])
    repo = tmp_path / "repo"
    report = gen.generate(plan, repo, RepoOptions(instances=2, gpus=[0, 1]), validate=True)
    assert report.validated
    models = gen.check_repository(repo)
    assert set(models) == {"ssd", "ssd_engine", "ssd_preprocess", "ssd_postprocess"}
    eng = models["ssd_engine"]
    assert eng.platform == "tensorrt_plan" and eng.max_batch_size == 32
    assert list(eng.dynamic_batching.preferred_batch_size) == [8, 32]
    g = eng.instance_group[0]
    assert g.kind == pb2.ModelInstanceGroup.KIND_GPU and g.count == 2 and list(g.gpus) == [0, 1]
    assert [(t.name, list(t.dims)) for t in eng.output] == [("loc", [8732, 4]), ("conf", [8732, 21])]
    assert (repo / "ssd_engine/1/model.plan").read_bytes() == plan.read_bytes()
    # every model batches as far as the engine does, so the ensemble never exceeds a step
    assert {m.max_batch_size for m in models.values()} == {32}
    assert models["ssd"].platform == "ensemble"


def test_plan_profile_choice_and_max_batch_cap(tmp_path):
    plan = _fake_plan(tmp_path, profiles=[(1, 1, 1), (1, 16, 64), (4, 8, 128)])
    eng_cfg = _engine_cfg(gen.generate(plan, tmp_path / "a", validate=True).output)
    # the profile starting at 1 with the largest max; (4, 8, 128) cannot take a batch of 1
    assert eng_cfg.max_batch_size == 64 and list(eng_cfg.instance_group[0].profile) == ["1"]
    capped = _engine_cfg(gen.generate(plan, tmp_path / "b", max_batch=16, validate=True).output)
    assert capped.max_batch_size == 16
    with pytest.raises(TritonError, match="exceeds the profile's largest batch 64"):
        gen.generate(plan, tmp_path / "c", max_batch=65)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"profiles": [(2, 4, 8)]}, "no batch profile starts at 1"),
        ({"outputs": ["loc", "conf", "priors"]}, "priors"),
        ({"outputs": ["loc"]}, r"no output\(s\) \['conf'\]"),
    ],
)
def test_plan_repository_refuses_what_triton_cannot_batch(tmp_path, kwargs, message):
    plan = _fake_plan(tmp_path, **kwargs)
    with pytest.raises(TritonError, match=message):
        gen.generate(plan, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".repo")] == []


def test_plan_without_manifest_is_a_one_line_error(tmp_path):
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"x")
    with pytest.raises(TritonError, match="no manifest"):
        gen.generate(plan, tmp_path / "repo")


def test_plan_cannot_run_on_cpu_instances(tmp_path):
    with pytest.raises(TritonError, match="GPU only"):
        gen.generate(_fake_plan(tmp_path), tmp_path / "repo", RepoOptions(kind="cpu"))


def test_output_folder_is_replaced_only_with_force(tmp_path):
    plan = _fake_plan(tmp_path)
    repo = tmp_path / "repo"
    gen.generate(plan, repo, RepoOptions(name="det"))
    with pytest.raises(TritonError, match="already exists"):
        gen.generate(plan, repo)
    assert sorted(p.name for p in repo.iterdir()) == [
        "det",
        "det_engine",
        "det_postprocess",
        "det_preprocess",
    ]
    gen.generate(plan, repo, force=True)
    assert sorted(p.name for p in repo.iterdir()) == [
        "ssd",
        "ssd_engine",
        "ssd_postprocess",
        "ssd_preprocess",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- the wiring check --------------------------------------------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_check_repository_catches_broken_wiring(tmp_path):
    plan = _fake_plan(tmp_path)
    repo = gen.generate(plan, tmp_path / "repo").output
    gen.check_repository(repo)

    ens = repo / "ssd" / "config.pbtxt"
    original = ens.read_text()
    _edit(ens, 'key: "loc" value: "loc_heads"', 'key: "loc" value: "loc_head"')  # the engine's output_map
    with pytest.raises(TritonError, match="'loc_heads' is not produced"):
        gen.check_repository(repo)
    ens.write_text(original)

    post = repo / "ssd_postprocess" / "config.pbtxt"
    _edit(post, "dims: [ 8732, 21 ]", "dims: [ 8732, 81 ]")
    with pytest.raises(TritonError, match="does not fit ssd_postprocess input 'conf'"):
        gen.check_repository(repo)
    _edit(post, "dims: [ 8732, 81 ]", "dims: [ 8732, 21 ]")

    (repo / "ssd_engine" / "1" / "model.plan").unlink()
    with pytest.raises(TritonError, match="missing model.plan"):
        gen.check_repository(repo)


# -- ONNX + the Python-backend models in-process --------------------------------------------------------


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Error:
    def __init__(self, msg: str) -> None:
        self._msg = msg

    def message(self) -> str:
        return self._msg


class _Response:
    def __init__(self, output_tensors=(), error=None) -> None:
        self.outputs = {t.name(): t for t in output_tensors}
        self.error = error


class _Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = {k: _Tensor(k, v) for k, v in inputs.items()}


def _stand_in_pb_utils() -> types.ModuleType:
    """The part of Triton's ``triton_python_backend_utils`` that a Python model touches."""
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor = _Tensor
    m.TritonError = _Error
    m.InferenceResponse = _Response
    m.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    return m


@pytest.fixture()
def python_model(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stand_in_pb_utils())

    def load(repo: Path, name: str):
        cfg = gen.parse_config((repo / name / "config.pbtxt").read_text())
        spec = importlib.util.spec_from_file_location(f"_triton_{name}", repo / name / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        # Triton hands the model its config as JSON with the proto field names.
        model.initialize({
            "model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True),
            "model_repository": str(repo / name), "model_version": "1", "model_name": name,
        })  # fmt: skip
        return model, cfg

    return load


def _encode(path: Path, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def _run_ensemble(repo: Path, load, batches: list[list[bytes]]) -> list[_Response]:
    """Run the ensemble the way Triton would: follow the parsed steps' input/output maps, with ONNX
    Runtime standing in for the engine model."""
    import onnxruntime as ort

    models = gen.check_repository(repo)
    ens = models["ssd"]
    sess = ort.InferenceSession(str(repo / "ssd_engine/1/model.onnx"), providers=["CPUExecutionProvider"])
    pythons = {n: load(repo, n)[0] for n in ("ssd_preprocess", "ssd_postprocess")}
    states = [{"IMAGE": np.array([[b] for b in blobs], dtype=object)} for blobs in batches]
    failed: dict[int, _Response] = {}
    for step in ens.ensemble_scheduling.step:
        live = [i for i in range(len(states)) if i not in failed]
        reqs = [_Request(**{k: states[i][v] for k, v in step.input_map.items()}) for i in live]
        if step.model_name == "ssd_engine":
            names = list(step.output_map)
            responses = []
            for r in reqs:
                arrays = sess.run(names, {k: t.as_numpy() for k, t in r.inputs.items()})
                responses.append(_Response([_Tensor(n, a) for n, a in zip(names, arrays)]))
        else:
            responses = pythons[step.model_name].execute(reqs)  # one call: Triton batches requests
        assert len(responses) == len(reqs)
        for i, resp in zip(live, responses):
            if resp.error is not None:
                failed[i] = resp
                continue
            for key, value in step.output_map.items():
                states[i][value] = resp.outputs[key].as_numpy()
    out = []
    for i, st in enumerate(states):
        out.append(failed.get(i) or _Response([_Tensor(t.name, st[t.name]) for t in ens.output]))
    return out


def test_onnx_repository_python_models_match_detector(tmp_path, ssd300_onnx, sample_paths, python_model):
    from ssd_deploy.runtime import Detector

    repo = tmp_path / "repo"
    report = gen.generate(
        ssd300_onnx, repo, RepoOptions(detect_overrides={"conf_thresh": 0.3}), validate=True
    )
    eng = _engine_cfg(repo)
    assert eng.platform == "onnxruntime_onnx" and eng.max_batch_size == 8
    assert eng.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_AUTO
    assert report.facts.config.num_priors == 8732

    blobs = [
        _encode(sample_paths[0], "PNG"),
        _encode(sample_paths[1], "JPEG"),
        _encode(sample_paths[2], "JPEG"),
    ]
    batches = [[blobs[0]], [blobs[1], blobs[2]], [b"this is not an image"], [blobs[2]]]
    responses = _run_ensemble(repo, python_model, batches)

    assert responses[2].error is not None and "image 0" in responses[2].error.message()
    det = Detector.load(ssd300_onnx, device="cpu")  # the repository's engine is ONNX Runtime
    for batch, resp in zip(batches, responses):
        if batch == [b"this is not an image"]:
            continue
        assert resp.error is None
        counts = resp.outputs["num_detections"].as_numpy()[:, 0]
        boxes, scores = resp.outputs["boxes"].as_numpy(), resp.outputs["scores"].as_numpy()
        classes = resp.outputs["class_ids"].as_numpy()
        assert boxes.shape[:2] == scores.shape == classes.shape and boxes.shape[0] == len(batch)
        for j, blob in enumerate(batch):
            want = det.detect(blob, conf_thresh=0.3)
            n = int(counts[j])
            assert n == len(want) > 0
            order = np.lexsort((-scores[j, :n], classes[j, :n]))
            ref = np.lexsort((-want.scores, want.class_ids))
            np.testing.assert_array_equal(classes[j, :n][order], want.class_ids[ref])
            np.testing.assert_allclose(scores[j, :n][order], want.scores[ref], atol=1e-5)
            np.testing.assert_allclose(boxes[j, :n][order], want.boxes[ref], atol=0.05)
            assert not boxes[j, n:].any() and not scores[j, n:].any()  # padding is zeros


def test_postprocess_model_answers_good_requests_next_to_bad_ones(tmp_path, ssd300_onnx, python_model):
    repo = gen.generate(
        ssd300_onnx, tmp_path / "repo", RepoOptions(detect_overrides={"conf_thresh": 0.5})
    ).output
    post, cfg = python_model(repo, "ssd_postprocess")
    p, c = 8732, 21
    rng = np.random.default_rng(0)
    conf = np.full((1, p, c), 0.001, np.float32)
    conf[0, :, 0] = 0.98
    conf[0, 1234, 7] = 0.9  # one confident car on prior 1234, offsets zero: its box is that prior's box
    good = _Request(
        loc=np.zeros((1, p, 4), np.float32), conf=conf, image_size=np.array([[640, 480]], np.int32)
    )
    bad = _Request(loc=np.zeros((1, p, 4), np.float32), conf=rng.random((1, p, 3), dtype=np.float32),
                   image_size=np.array([[10, 10]], np.int32))  # fmt: skip
    r_good, r_bad = post.execute([good, bad])
    assert r_bad.error is not None and "conf [N,8732,21]" in r_bad.error.message()
    assert r_good.error is None
    assert r_good.outputs["num_detections"].as_numpy().tolist() == [[1]]
    assert r_good.outputs["class_ids"].as_numpy().tolist() == [[7]]
    from ssd_deploy.priors import prior_boxes

    cx, cy, w, h = prior_boxes(preset("voc300").prior)[1234]
    want = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * [640, 480, 640, 480]
    np.testing.assert_allclose(r_good.outputs["boxes"].as_numpy()[0, 0], want, atol=1e-3)
    assert (
        json.loads((repo / "ssd_postprocess/1/ssd_config.json").read_text())["detect"]["conf_thresh"] == 0.5
    )


def test_cli_writes_and_checks(tmp_path, ssd300_onnx, capsys):
    repo = tmp_path / "model_repository"
    assert triton_main(["--engine", str(ssd300_onnx), "--output", str(repo), "--max-batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "max batch 4" in out and "parses with Triton's model-config schema" in out
    assert _engine_cfg(repo).max_batch_size == 4
    assert triton_main(["--check", str(repo)]) == 0
    assert triton_main(["--engine", str(tmp_path / "missing.plan"), "--output", str(tmp_path / "r2")]) == 2
    assert "no such engine file" in capsys.readouterr().err


def test_module_entry_point_runs(tmp_path, ssd300_onnx):
    import subprocess

    repo = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-m", "ssd_deploy.triton", "--engine", str(ssd300_onnx), "--output", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (repo / "ssd" / "config.pbtxt").is_file()
