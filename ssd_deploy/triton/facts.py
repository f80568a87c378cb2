"""What the generator needs to know about an engine: batch range, tensors, SSD config (plan manifest
or ONNX file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, SSDConfig
from ..contract import CONF, DETECTIONS, INPUT, LOC, PRECISION_KEY, artifact_kind
from .layout import TritonError


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
    #: Detect baked into the graph (docs/end_to_end.md): the repository is then the engine alone.
    end_to_end: Any = None

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
    from ..tensorrt.manifest import ManifestError, read_manifest

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
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT has its own exception types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TritonError(f"{path}: ONNX Runtime cannot load it: {first}") from None
    meta = sess.get_modelmeta().custom_metadata_map
    try:
        config = SSDConfig.from_metadata(meta, str(path))
    except ConfigError as e:
        raise TritonError(str(e)) from None
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name: o for o in sess.get_outputs()}
    if INPUT not in inputs or not {LOC, CONF} <= outputs.keys():
        raise TritonError(f"{path}: expected input '{INPUT}' and outputs '{LOC}', '{CONF}'")
    shape = inputs[INPUT].shape
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
    from ..runtime.in_graph import read_end_to_end

    try:
        baked = read_end_to_end(meta, str(path)) if DETECTIONS in outputs else None
    except ConfigError as e:
        raise TritonError(str(e)) from None
    return EngineFacts(
        path=path, platform="onnxruntime_onnx", config=config,
        precision=meta.get(PRECISION_KEY, "fp32"), input_name=INPUT,
        output_names=(LOC, CONF), max_batch=max_batch or 8, end_to_end=baked,
    )  # fmt: skip


def engine_facts(engine: str | os.PathLike[str], max_batch: int | None = None) -> EngineFacts:
    """Read what the repository needs from a ``.plan`` (+ manifest) or ``.onnx`` file."""
    p = Path(engine)
    if not p.is_file():
        raise TritonError(f"{p}: no such engine file")
    if max_batch is not None and max_batch < 1:
        raise TritonError(f"--max-batch must be >= 1, got {max_batch}")
    kind = artifact_kind(p)
    if kind == "plan":
        return _plan_facts(p, max_batch)
    if kind == "onnx":
        return _onnx_facts(p, max_batch)
    raise TritonError(f"{p}: expected a TensorRT .plan or an .onnx file")
