"""The ``config.pbtxt`` of each model: the engine, the Python pre/post-processing stages, the ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..contract import DETECTIONS, NUM_DETECTIONS
from .facts import EngineFacts
from .layout import IMAGE_INPUT, MODEL_FILES, OUTPUTS, TritonError
from .pbtxt import Sym


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
        "parameters": _params(params),
    }  # fmt: skip


def engine_config(facts: EngineFacts, opts: RepoOptions) -> dict[str, Any]:
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


def python_config(name: str, stage: str, facts: EngineFacts, opts: RepoOptions) -> dict[str, Any]:
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


def ensemble_config(facts: EngineFacts, opts: RepoOptions) -> dict[str, Any]:
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


def end_to_end_config(facts: EngineFacts, opts: RepoOptions) -> dict[str, Any]:
    """The single model of an end-to-end artifact: preprocessed images in, detections out.

    ``num_detections`` is ``[N]``: Triton declares a batch-only tensor as ``dims [1]`` reshaped to
    ``[]``. ``loc``/``conf`` stay available; ``priors`` (no batch dimension) is not declared.
    """
    cfg = engine_config(facts, opts)
    d = facts.end_to_end.max_detections
    cfg["name"] = opts.name
    cfg["output"] = cfg["output"] + [
        _tensor(DETECTIONS, "TYPE_FP32", [d, 6]),
        {**_tensor(NUM_DETECTIONS, "TYPE_INT32", [1]), "reshape": {"shape": []}},
    ]
    return cfg
