"""Triton's ``config.pbtxt`` text format: writing it from dicts, parsing it with Triton's own schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .layout import TritonError


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
