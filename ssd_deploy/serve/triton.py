"""Write a Triton Inference Server model repository for an ssd_deploy engine.

``python -m ssd_deploy.triton --engine engines/ssd300_fp16.plan --output model_repository/``
writes four models (``NAME`` defaults to ``ssd``)::

    model_repository/
      NAME_engine/       the network: tensorrt_plan (model.plan) or onnxruntime_onnx (model.onnx),
                         max batch from the engine's profile, dynamic batching, instance groups
      NAME_preprocess/   Python backend: encoded JPEG/PNG bytes -> network input + image size
      NAME_postprocess/  Python backend: loc/conf heads -> decode + NMS (ssd_deploy.postprocess)
      NAME/              ensemble: IMAGE -> preprocess -> engine -> postprocess -> detections

A plan's facts (batch profiles, input and outputs, SSD config) come from the manifest written
beside it by ``ssd_deploy.build`` (``<plan>.json``); an ONNX file's from the file itself. Every
``config.pbtxt`` is checked by parsing it with Triton's own model-config schema (from
``tritonclient``) and the ensemble's wiring is checked tensor by tensor (:func:`check_repository`).
"""

from __future__ import annotations

from ..errors import SSDDeployError
import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import ConfigError, SSDConfig

__all__ = [
    "EngineFacts",
    "RepoOptions",
    "RepositoryReport",
    "TritonError",
    "Sym",
    "check_repository",
    "engine_facts",
    "generate",
    "load_model_config_schema",
    "main",
    "parse_config",
    "to_pbtxt",
]

TEMPLATE = Path(__file__).with_name("triton_model.py")
CONFIG_FILE = "ssd_config.json"
IMAGE_INPUT = "IMAGE"
OUTPUTS = (("boxes", "TYPE_FP32", [-1, 4]), ("scores", "TYPE_FP32", [-1]),
           ("class_ids", "TYPE_INT32", [-1]), ("num_detections", "TYPE_INT32", [1]))  # fmt: skip
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx", "python": "model.py",
               "openvino": "model.onnx"}
#: Engines an .onnx file can run on in Triton: its ONNX Runtime platform or its OpenVINO backend.
ONNX_BACKENDS = ("onnxruntime", "openvino")


class TritonError(SSDDeployError, RuntimeError):
    """The repository cannot be written or does not check out; one line naming the file."""


# -- text format ---------------------------------------------------------------------------------


class Sym(str):
    """An enum value, written without quotes (``kind: KIND_GPU``)."""


def _scalar(v: Any) -> str:
    if isinstance(v, Sym):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a C-style quoted string, which the text format accepts
    raise TypeError(f"cannot write {type(v).__name__} in a config.pbtxt")


def _is_scalar_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and not any(isinstance(x, (dict, list, tuple)) for x in v)


def _is_flat(message: dict[str, Any], depth: int = 0) -> bool:
    """Small enough to write on one line: scalars, scalar lists, and one level of small messages."""
    for v in message.values():
        if isinstance(v, dict):
            if depth > 0 or len(v) > 2 or not _is_flat(v, depth + 1):
                return False
        elif isinstance(v, (list, tuple)) and not _is_scalar_list(v):
            return False
    return True


def _inline(message: dict[str, Any]) -> str:
    fields = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, dict):
            fields.append(f"{key} {{ {_inline(value)} }}")
        elif isinstance(value, (list, tuple)):
            fields.append(f"{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            fields.append(f"{key}: {_scalar(value)}")
    return " ".join(fields)


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a nested dict: dict -> message, list of dicts -> repeated
    message, list of scalars -> repeated scalar, :class:`Sym` -> enum value."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines.append(to_pbtxt(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                if _is_flat(item):
                    lines.append(f"{pad}  {{ {_inline(item)} }}{comma}")  # as in Triton's examples
                    continue
                lines.append(f"{pad}  {{")
                lines.append(to_pbtxt(item, indent + 2))
                lines.append(f"{pad}  }}{comma}")
            lines.append(f"{pad}]")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def load_model_config_schema() -> Any:
    """Triton's ``model_config_pb2`` module, shipped in ``tritonclient``."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise TritonError(
            "checking config.pbtxt needs tritonclient: pip install 'ssd_deploy[serve]'"
        ) from None
    except RuntimeError:
        # tritonclient.grpc refuses to import without grpcio; the schema module itself does not
        # need it, so load that file alone.
        import importlib.util

        spec = importlib.util.find_spec("tritonclient")
        assert spec is not None and spec.submodule_search_locations
        path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
        mspec = importlib.util.spec_from_file_location("_ssd_triton_model_config_pb2", path)
        if mspec is None or mspec.loader is None:
            raise TritonError(f"{path}: cannot load Triton's model config schema") from None
        model_config_pb2 = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(model_config_pb2)
    return model_config_pb2


def parse_config(text: str, source: str = "config.pbtxt") -> Any:
    """Parse ``text`` into Triton's ``inference.ModelConfig``; :class:`TritonError` on any error."""
    from google.protobuf import text_format

    pb2 = load_model_config_schema()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as e:
        raise TritonError(f"{source}: not a valid Triton model config: {e}") from None


# -- engine facts --------------------------------------------------------------------------------


@dataclass
class EngineFacts:
    """What the model configs need to know about the network."""

    path: Path
    platform: str  # tensorrt_plan | onnxruntime_onnx | openvino (Triton's OpenVINO backend)
    config: SSDConfig
    precision: str
    input_name: str
    output_names: tuple[str, str]  # (loc, conf)
    max_batch: int
    opt_batch: int | None = None
    profile_index: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def input_dims(self) -> list[int]:
        return [3, self.config.size, self.config.size]

    @property
    def loc_dims(self) -> list[int]:
        return [self.config.num_priors, 4]

    @property
    def conf_dims(self) -> list[int]:
        return [self.config.num_priors, self.config.num_classes]


def _plan_facts(plan: Path, max_batch: int | None) -> EngineFacts:
    from ..runtime.tensorrt.manifest import ManifestError, read_manifest

    try:
        m = read_manifest(plan)
    except ManifestError as e:
        raise TritonError(str(e)) from None
    src = f"{plan}.json"
    try:
        config = SSDConfig.from_dict(m.config)
    except ConfigError as e:
        raise TritonError(f"{src}: {e}") from None
    if tuple(m.input_shape) != (3, config.size, config.size):
        raise TritonError(
            f"{src}: input shape {list(m.input_shape)} does not match the config's size {config.size}"
        )
    missing = [n for n in ("loc", "conf") if n not in m.output_names]
    if missing:
        raise TritonError(f"{src}: the plan has no output(s) {missing}; its outputs are {m.output_names}")
    extra = [n for n in m.output_names if n not in ("loc", "conf")]
    if extra:
        # Triton's TensorRT backend wants every engine output in config.pbtxt, each with the
        # batch dimension when max_batch_size > 0; the constant priors [P, 4] has none, and
        # declaring it anyway would size its buffer by the batch.
        raise TritonError(
            f"{plan}: the plan has output(s) {extra} besides loc and conf; Triton needs every output of a "
            "batching engine to carry the batch dimension. Build the plan without them (the runtime "
            "computes the priors from the config)"
        )
    # Triton sends any batch from 1 to max_batch_size, so only a profile starting at 1 fits.
    usable = [(i, p) for i, p in enumerate(m.profiles) if p[0] == 1]
    if not usable:
        raise TritonError(
            f"{plan}: no batch profile starts at 1 (profiles {[list(p) for p in m.profiles]}); "
            "Triton's dynamic batcher sends batches from 1 up, so rebuild with a profile like 1:8:32"
        )
    index, (lo, opt, hi) = max(usable, key=lambda ip: (ip[1][2], -ip[0]))
    notes = []
    if max_batch is not None:
        if max_batch > hi:
            raise TritonError(f"{plan}: --max-batch {max_batch} exceeds the profile's largest batch {hi}")
        hi = max_batch
    if len(m.profiles) > 1:
        notes.append(f"using batch profile {index} ({lo}:{opt}:{m.profiles[index][2]}) of {len(m.profiles)}")
    notes.append(
        f"plan built with TensorRT {m.tensorrt_version} on {m.gpu_name} (compute capability "
        f"{m.compute_capability}): run it in a Triton container with that TensorRT version"
    )
    return EngineFacts(
        path=plan, platform="tensorrt_plan", config=config, precision=m.precision, input_name=m.input_name,
        output_names=("loc", "conf"), max_batch=hi, opt_batch=opt if opt < hi else None,
        profile_index=index if len(m.profiles) > 1 else None, notes=notes,
    )  # fmt: skip


def _onnx_facts(path: Path, max_batch: int | None) -> EngineFacts:
    try:
        import onnxruntime as ort
    except ImportError:
        raise TritonError("reading an .onnx file needs onnxruntime: pip install onnxruntime") from None
    from ..config import METADATA_KEY

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT has its own exception types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TritonError(f"{path}: ONNX Runtime cannot load it: {first}") from None
    meta = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise TritonError(f"{path}: no '{METADATA_KEY}' metadata; export it with python -m ssd_deploy.export")
    try:
        config = SSDConfig.from_json(meta[METADATA_KEY])
    except ConfigError as e:
        raise TritonError(f"{path}: {e}") from None
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name: o for o in sess.get_outputs()}
    if "images" not in inputs or not {"loc", "conf"} <= outputs.keys():
        raise TritonError(f"{path}: expected input 'images' and outputs 'loc', 'conf'")
    shape = inputs["images"].shape
    if len(shape) != 4 or list(shape[1:]) != [3, config.size, config.size]:
        raise TritonError(
            f"{path}: input 'images' has shape {shape}, the config says [N,3,{config.size},{config.size}]"
        )
    for name in ("loc", "conf"):
        if isinstance(outputs[name].shape[0], int):
            raise TritonError(
                f"{path}: output '{name}' has a fixed batch dimension; export with a dynamic batch"
            )
    if isinstance(shape[0], int):
        raise TritonError(
            f"{path}: the batch dimension is fixed to {shape[0]}; Triton batching needs a dynamic "
            "batch (python -m ssd_deploy.export writes one)"
        )
    return EngineFacts(
        path=path, platform="onnxruntime_onnx", config=config,
        precision=meta.get("ssd_deploy.precision", "fp32"), input_name="images",
        output_names=("loc", "conf"), max_batch=max_batch or 8,
    )  # fmt: skip


def engine_facts(engine: str | os.PathLike[str], max_batch: int | None = None) -> EngineFacts:
    """Read what the repository needs from a ``.plan`` (+ manifest) or ``.onnx`` file."""
    p = Path(engine)
    if not p.is_file():
        raise TritonError(f"{p}: no such engine file")
    if max_batch is not None and max_batch < 1:
        raise TritonError(f"--max-batch must be >= 1, got {max_batch}")
    suffix = p.suffix.lower()
    if suffix in (".plan", ".engine", ".trt"):
        return _plan_facts(p, max_batch)
    if suffix == ".onnx":
        return _onnx_facts(p, max_batch)
    raise TritonError(f"{p}: expected a TensorRT .plan or an .onnx file")


# -- model configs -------------------------------------------------------------------------------


@dataclass
class RepoOptions:
    """Knobs of the generated repository (the CLI flags)."""

    name: str = "ssd"
    instances: int = 1  # engine instances per GPU (or in all, on CPU)
    gpus: list[int] | None = None
    kind: str = "auto"  # auto | gpu | cpu (engine model only)
    python_instances: int = 2
    queue_delay_us: int = 500
    max_pixels: int = 40_000_000
    max_image_bytes: int = 16 * 1024 * 1024
    #: Detect parameters to change from the model's own (conf_thresh, nms_thresh, top_k, keep_top_k).
    detect_overrides: dict[str, Any] = field(default_factory=dict)
    #: What runs an .onnx engine: "onnxruntime" (platform onnxruntime_onnx) or "openvino" (backend).
    onnx_backend: str = "onnxruntime"
    #: OpenVINO backend only: run in BF16 (its HINT_BF16 parameter); otherwise nothing is hinted.
    bf16: bool = False


def _tensor(name: str, dtype: str, dims: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "data_type": Sym(dtype), "dims": list(dims)}


def _params(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def _openvino_engine_config(facts: EngineFacts, opts: RepoOptions) -> dict[str, Any]:
    """Triton's OpenVINO backend (CPU): it reads model.onnx itself when told by default_model_filename."""
    if opts.kind == "gpu" or opts.gpus:
        raise TritonError("--backend openvino runs the engine on the CPU; drop --kind gpu / --gpus")
    params = {"PERFORMANCE_HINT": "LATENCY" if opts.instances == 1 else "THROUGHPUT"}
    if opts.bf16:
        params["HINT_BF16"] = "YES"
    return {
        "name": f"{opts.name}_engine",
        "backend": "openvino",
        "default_model_filename": MODEL_FILES["openvino"],
        "max_batch_size": facts.max_batch,
        "input": [_tensor(facts.input_name, "TYPE_FP32", facts.input_dims)],
        "output": [_tensor(facts.output_names[0], "TYPE_FP32", facts.loc_dims),
                   _tensor(facts.output_names[1], "TYPE_FP32", facts.conf_dims)],
        "dynamic_batching": {"max_queue_delay_microseconds": opts.queue_delay_us},
        "instance_group": [{"count": opts.instances, "kind": Sym("KIND_CPU")}],
        "parameters": [{"key": k, "value": {"string_value": v}} for k, v in params.items()],
    }  # fmt: skip


def _engine_config(facts: EngineFacts, opts: RepoOptions) -> dict[str, Any]:
    if facts.platform == "openvino":
        return _openvino_engine_config(facts, opts)
    kind = opts.kind
    if kind == "auto":
        kind = "gpu" if facts.platform == "tensorrt_plan" or opts.gpus else "auto"
    if facts.platform == "tensorrt_plan" and kind != "gpu":
        raise TritonError("a TensorRT plan runs on a GPU only; drop --kind cpu")
    group: dict[str, Any] = {"count": opts.instances, "kind": Sym(f"KIND_{kind.upper()}")}
    if opts.gpus and kind == "gpu":
        group["gpus"] = list(opts.gpus)
    if facts.profile_index is not None:
        group["profile"] = [str(facts.profile_index)]
    batching: dict[str, Any] = {}
    if facts.opt_batch:
        batching["preferred_batch_size"] = [facts.opt_batch, facts.max_batch]
    batching["max_queue_delay_microseconds"] = opts.queue_delay_us
    return {
        "name": f"{opts.name}_engine",
        "platform": facts.platform,
        "max_batch_size": facts.max_batch,
        "input": [_tensor(facts.input_name, "TYPE_FP32", facts.input_dims)],
        "output": [_tensor(facts.output_names[0], "TYPE_FP32", facts.loc_dims),
                   _tensor(facts.output_names[1], "TYPE_FP32", facts.conf_dims)],
        "dynamic_batching": batching,
        "instance_group": [group],
    }  # fmt: skip


def _python_config(name: str, stage: str, facts: EngineFacts, opts: RepoOptions) -> dict[str, Any]:
    if stage == "preprocess":
        inputs = [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])]
        outputs = [
            _tensor(facts.input_name, "TYPE_FP32", facts.input_dims),
            _tensor("image_size", "TYPE_INT32", [2]),
        ]
        params = {
            "stage": stage,
            "image_input": IMAGE_INPUT,
            "tensor_output": facts.input_name,
            "max_pixels": str(opts.max_pixels),
            "max_image_bytes": str(opts.max_image_bytes),
        }
    else:
        inputs = [_tensor("loc", "TYPE_FP32", facts.loc_dims), _tensor("conf", "TYPE_FP32", facts.conf_dims),
                  _tensor("image_size", "TYPE_INT32", [2])]  # fmt: skip
        outputs = [_tensor(n, t, d) for n, t, d in OUTPUTS]
        params = {"stage": stage}
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": facts.max_batch,
        "input": inputs,
        "output": outputs,
        "dynamic_batching": {"max_queue_delay_microseconds": opts.queue_delay_us},
        "instance_group": [{"count": opts.python_instances, "kind": Sym("KIND_CPU")}],
        "parameters": _params(params),
    }


def _ensemble_config(facts: EngineFacts, opts: RepoOptions) -> dict[str, Any]:
    n = opts.name
    loc, conf = facts.output_names
    steps = [
        {"model_name": f"{n}_preprocess", "model_version": -1,
         "input_map": [{"key": IMAGE_INPUT, "value": IMAGE_INPUT}],
         "output_map": [{"key": facts.input_name, "value": "preprocessed"},
                        {"key": "image_size", "value": "image_size"}]},
        {"model_name": f"{n}_engine", "model_version": -1,
         "input_map": [{"key": facts.input_name, "value": "preprocessed"}],
         "output_map": [{"key": loc, "value": "loc_heads"}, {"key": conf, "value": "conf_heads"}]},
        {"model_name": f"{n}_postprocess", "model_version": -1,
         "input_map": [{"key": "loc", "value": "loc_heads"}, {"key": "conf", "value": "conf_heads"},
                       {"key": "image_size", "value": "image_size"}],
         "output_map": [{"key": o, "value": o} for o, _, _ in OUTPUTS]},
    ]  # fmt: skip
    return {
        "name": n,
        "platform": "ensemble",
        "max_batch_size": facts.max_batch,
        "input": [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])],
        "output": [_tensor(o, t, d) for o, t, d in OUTPUTS],
        "ensemble_scheduling": {"step": steps},
    }


# -- writing -------------------------------------------------------------------------------------


@dataclass
class RepositoryReport:
    output: Path
    models: dict[str, Path]
    facts: EngineFacts
    validated: bool


def _header(facts: EngineFacts) -> str:
    return (f"# Written by python -m ssd_deploy.triton from {facts.path.name} "
            f"({facts.config.name}, {facts.precision}); regenerate rather than edit.\n")  # fmt: skip


def generate(
    engine: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: RepoOptions | None = None,
    *,
    max_batch: int | None = None,
    force: bool = False,
    validate: bool | None = None,
) -> RepositoryReport:
    """Write the repository to ``output``. ``validate=None`` checks the configs when tritonclient
    is installed, ``True`` requires it. The repository is built in a temporary folder beside
    ``output`` and moved into place whole, so a failure leaves nothing half-written."""
    opts = options or RepoOptions()
    if opts.instances < 1 or opts.python_instances < 1:
        raise TritonError("instance counts must be >= 1")
    if opts.kind not in ("auto", "gpu", "cpu"):
        raise TritonError(f"--kind must be auto, gpu or cpu, got {opts.kind!r}")
    if not opts.name.replace("_", "").replace("-", "").isalnum():
        raise TritonError(f"model name {opts.name!r} must be letters, digits, '-' and '_'")
    facts = engine_facts(engine, max_batch)
    if opts.onnx_backend not in ONNX_BACKENDS:
        raise TritonError(f"--backend must be one of {', '.join(ONNX_BACKENDS)}, got {opts.onnx_backend!r}")
    if opts.onnx_backend == "openvino":
        if facts.platform != "onnxruntime_onnx":
            raise TritonError(f"{facts.path}: --backend openvino needs an .onnx file, not a TensorRT plan")
        facts.platform = "openvino"
        if not opts.bf16:
            # The backend accepts HINT_BF16=YES only and rejects other OpenVINO properties, and
            # OpenVINO's CPU default on CPUs with BF16 is BF16 (docs/openvino.md).
            facts.notes.append("Triton's OpenVINO backend cannot pin FP32: on a CPU with AVX512-BF16 or AMX "
                               "OpenVINO runs this graph in BF16; its accuracy there is what "
                               "ssd-check --device openvino --precision bf16 reports")  # fmt: skip
    elif opts.bf16:
        raise TritonError("--precision bf16 needs --backend openvino")
    config = facts.config
    if opts.detect_overrides:
        unknown = set(opts.detect_overrides) - {"conf_thresh", "nms_thresh", "top_k", "keep_top_k"}
        if unknown:
            raise TritonError(f"unknown Detect parameter(s) {sorted(unknown)}")
        changes = dict(opts.detect_overrides)
        changes.setdefault("keep_top_k", config.detect.keep_top_k)
        try:
            config = config.replace(detect=config.detect.replace(**changes))
        except ConfigError as e:
            raise TritonError(str(e)) from None
    out = Path(output)
    if out.exists() and not force:
        raise TritonError(f"{out}: already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise TritonError(f"{out}: exists and is not a folder")

    configs = {
        f"{opts.name}_engine": _engine_config(facts, opts),
        f"{opts.name}_preprocess": _python_config(f"{opts.name}_preprocess", "preprocess", facts, opts),
        f"{opts.name}_postprocess": _python_config(f"{opts.name}_postprocess", "postprocess", facts, opts),
        opts.name: _ensemble_config(facts, opts),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        models: dict[str, Path] = {}
        for name, cfg in configs.items():
            mdir = tmp / name
            vdir = mdir / "1"
            vdir.mkdir(parents=True)
            (mdir / "config.pbtxt").write_text(_header(facts) + to_pbtxt(cfg) + "\n")
            models[name] = out / name
            if cfg.get("backend") == "python":
                shutil.copyfile(TEMPLATE, vdir / "model.py")
                (vdir / CONFIG_FILE).write_text(config.to_json() + "\n")
            elif (cfg.get("platform") or cfg.get("backend")) in MODEL_FILES:
                shutil.copyfile(facts.path, vdir / MODEL_FILES[cfg.get("platform") or cfg["backend"]])
                if facts.platform == "tensorrt_plan":
                    shutil.copyfile(f"{facts.path}.json", vdir / "model.plan.json")
        validated = False
        if validate or validate is None:
            try:
                check_repository(tmp, names=list(configs))
                validated = True
            except TritonError as e:
                if validate or "needs tritonclient" not in str(e):
                    raise
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RepositoryReport(output=out, models=models, facts=facts, validated=validated)


# -- checking ------------------------------------------------------------------------------------


def _dims(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.dims)


def check_repository(root: str | os.PathLike[str], names: Iterable[str] | None = None) -> dict[str, Any]:
    """Parse every ``config.pbtxt`` under ``root`` with Triton's schema and check what Triton
    would check at load time: names, model files, and that each ensemble step's inputs and
    outputs exist with matching types and shapes. Returns ``{model name: ModelConfig}``."""
    pb2 = load_model_config_schema()
    root = Path(root)
    dirs = [root / n for n in names] if names is not None else sorted(p for p in root.iterdir() if p.is_dir())
    models: dict[str, Any] = {}
    for d in dirs:
        path = d / "config.pbtxt"
        if not path.is_file():
            raise TritonError(f"{path}: missing")
        cfg = parse_config(path.read_text(), str(path))
        if cfg.name != d.name:
            raise TritonError(f"{path}: name {cfg.name!r} differs from its folder {d.name!r}")
        if not (d / "1").is_dir():
            raise TritonError(f"{d}: no version folder 1/")
        kind = cfg.backend if cfg.backend in ("python", "openvino") else cfg.platform
        # Triton's OpenVINO backend loads default_model_filename (model.xml when unset).
        wanted = (cfg.default_model_filename or "model.xml") if kind == "openvino" else MODEL_FILES.get(kind)
        if wanted and not (d / "1" / wanted).is_file():
            raise TritonError(f"{d / '1'}: missing {wanted}")
        if cfg.max_batch_size > 0 and not cfg.HasField("dynamic_batching") and kind != "ensemble":
            raise TritonError(f"{path}: batching model without dynamic_batching")
        models[cfg.name] = cfg
    ensembles = [c for c in models.values() if c.platform == "ensemble"]
    for ens in ensembles:
        _check_ensemble(ens, models, pb2, root)
    return models


def _check_ensemble(ens: Any, models: dict[str, Any], pb2: Any, root: Path) -> None:
    where = root / ens.name / "config.pbtxt"
    # tensor name -> (data type, dims) of what is available so far
    avail = {t.name: (t.data_type, _dims(t)) for t in ens.input}
    if not ens.ensemble_scheduling.step:
        raise TritonError(f"{where}: ensemble without steps")
    for i, step in enumerate(ens.ensemble_scheduling.step):
        model = models.get(step.model_name)
        if model is None:
            raise TritonError(
                f"{where}: step {i} uses model {step.model_name!r}, which is not in the repository"
            )
        if model.max_batch_size < ens.max_batch_size:
            raise TritonError(
                f"{where}: max_batch_size {ens.max_batch_size} exceeds {model.name}'s {model.max_batch_size}"
            )
        m_in = {t.name: (t.data_type, _dims(t)) for t in model.input}
        m_out = {t.name: (t.data_type, _dims(t)) for t in model.output}
        missing = set(m_in) - set(step.input_map)
        if missing:
            raise TritonError(f"{where}: step {i} ({model.name}) leaves input(s) {sorted(missing)} unmapped")
        for key, value in step.input_map.items():
            if key not in m_in:
                raise TritonError(f"{where}: step {i}: {model.name} has no input {key!r}")
            if value not in avail:
                raise TritonError(f"{where}: step {i}: tensor {value!r} is not produced before it is used")
            if not _compatible(avail[value], m_in[key]):
                raise TritonError(
                    f"{where}: step {i}: tensor {value!r} {_desc(pb2, avail[value])} does not fit "
                    f"{model.name} input {key!r} {_desc(pb2, m_in[key])}"
                )  # fmt: skip
        for key, value in step.output_map.items():
            if key not in m_out:
                raise TritonError(f"{where}: step {i}: {model.name} has no output {key!r}")
            avail[value] = m_out[key]
    for t in ens.output:
        if t.name not in avail:
            raise TritonError(f"{where}: ensemble output {t.name!r} is produced by no step")
        if not _compatible(avail[t.name], (t.data_type, _dims(t))):
            raise TritonError(f"{where}: output {t.name!r} is {_desc(pb2, avail[t.name])}, declared "
                              f"{_desc(pb2, (t.data_type, _dims(t)))}")  # fmt: skip


def _compatible(a: tuple[int, tuple[int, ...]], b: tuple[int, tuple[int, ...]]) -> bool:
    (ta, da), (tb, db) = a, b
    return ta == tb and len(da) == len(db) and all(x == y or -1 in (x, y) for x, y in zip(da, db))


def _desc(pb2: Any, t: tuple[int, tuple[int, ...]]) -> str:
    return f"{pb2.DataType.Name(t[0])} {list(t[1])}"


# -- CLI -----------------------------------------------------------------------------------------


def _gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus takes GPU indices like 0,1; got {text!r}") from None
    if not gpus or any(g < 0 for g in gpus):
        raise argparse.ArgumentTypeError(f"--gpus takes GPU indices like 0,1; got {text!r}")
    return gpus


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ssd_deploy.triton",
        description="Write a Triton model repository (engine + Python pre/post-processing + ensemble) for an "
        "ssd_deploy .plan or .onnx, or check one with --check.",
    )
    p.add_argument("--engine", help="TensorRT .plan (with its .plan.json manifest) or .onnx")
    p.add_argument(
        "--output", "-o", default="model_repository", help="repository folder (default model_repository)"
    )
    p.add_argument("--check", metavar="REPO", help="only check an existing repository")
    p.add_argument("--name", default="ssd", help="ensemble name; other models get it as prefix (default ssd)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="max_batch_size (default: the plan profile's largest batch; 8 for .onnx)",
    )
    p.add_argument("--instances", type=int, default=1, help="engine instances per GPU (default 1)")
    p.add_argument(
        "--gpus", type=_gpu_list, default=None, help="GPUs for the engine, e.g. 0,1 (default: all)"
    )
    p.add_argument(
        "--kind",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="where the engine runs (plans: gpu; .onnx default: Triton decides)",
    )
    p.add_argument(
        "--python-instances", type=int, default=2, help="instances of each Python model (default 2)"
    )
    p.add_argument("--queue-delay-us", type=int, default=500, help="dynamic batcher delay (default 500 us)")
    p.add_argument(
        "--max-megapixels", type=float, default=40.0, help="largest image the preprocess model decodes"
    )
    p.add_argument("--conf-thresh", type=float, default=None, help="override the model's Detect conf_thresh")
    p.add_argument("--nms-thresh", type=float, default=None, help="override the model's Detect nms_thresh")
    p.add_argument("--top-k", type=int, default=None, help="override the model's Detect top_k")
    p.add_argument("--keep-top-k", type=int, default=None, help="cap detections per image")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--backend", choices=ONNX_BACKENDS, default="onnxruntime",
                   help=".onnx engines: Triton's ONNX Runtime platform (default) or its OpenVINO backend (CPU)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="--backend openvino: bf16 sets the backend's HINT_BF16 (default: no hint)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.check:
            models = check_repository(args.check)
            print(f"{args.check}: {len(models)} model configs parse with Triton's schema and the ensembles "
                  f"are wired consistently: {', '.join(models)}")  # fmt: skip
            return 0
        if not args.engine:
            print("python -m ssd_deploy.triton: --engine is required (or --check REPO)", file=sys.stderr)
            return 2
        overrides = {
            "conf_thresh": args.conf_thresh,
            "nms_thresh": args.nms_thresh,
            "top_k": args.top_k,
            "keep_top_k": args.keep_top_k,
        }
        opts = RepoOptions(
            name=args.name, instances=args.instances, gpus=args.gpus, kind=args.kind,
            python_instances=args.python_instances, queue_delay_us=args.queue_delay_us,
            max_pixels=int(args.max_megapixels * 1e6),
            detect_overrides={k: v for k, v in overrides.items() if v is not None},
            onnx_backend=args.backend, bf16=args.precision == "bf16",
        )  # fmt: skip
        report = generate(args.engine, args.output, opts, max_batch=args.max_batch, force=args.force)
    except TritonError as e:
        print(f"python -m ssd_deploy.triton: {e}", file=sys.stderr)
        return 1
    f = report.facts
    print(f"wrote {report.output}/ for {f.path.name} ({f.config.name}, {f.precision}, {f.platform}, "
          f"max batch {f.max_batch}): {', '.join(report.models)}")  # fmt: skip
    for note in f.notes:
        print(f"  note: {note}")
    if report.validated:
        print("  every config.pbtxt parses with Triton's model-config schema; ensemble wiring checked")
    else:
        print("  not checked against Triton's schema (pip install tritonclient to check)")
    print(
        f"  run: docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -v $PWD/{report.output}:/models "
        "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
