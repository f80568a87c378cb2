"""Writing a repository: models, files and configs, atomically (a failure leaves nothing behind)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from .check import check_repository
from .configs import RepoOptions, end_to_end_config, engine_config, ensemble_config, python_config
from .facts import EngineFacts, engine_facts
from .layout import CONFIG_FILE, MODEL_FILES, ONNX_BACKENDS, TEMPLATE, TritonError
from .pbtxt import to_pbtxt


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

    if facts.end_to_end is not None:
        if opts.detect_overrides:
            raise TritonError(
                f"{facts.path}: Detect is baked into this end-to-end artifact; re-export it with the "
                "parameters wanted instead of overriding them here"
            )
        # One model, no Python backend: the engine itself returns the detections.
        configs = {opts.name: end_to_end_config(facts, opts)}
    else:
        configs = {
            f"{opts.name}_engine": engine_config(facts, opts),
            f"{opts.name}_preprocess": python_config(f"{opts.name}_preprocess", "preprocess", facts, opts),
            f"{opts.name}_postprocess": python_config(f"{opts.name}_postprocess", "postprocess", facts, opts),
            opts.name: ensemble_config(facts, opts),
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
