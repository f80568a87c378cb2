"""Checking a written repository: every config parses with Triton's schema, the ensemble wires up
tensor by tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .layout import MODEL_FILES, TritonError
from .pbtxt import load_model_config_schema, parse_config


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
