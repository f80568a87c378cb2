"""Read an ONNX file's ``metadata_props`` without the ``onnx`` package and without parsing the graph.

OpenVINO compiles fastest from a file path (its model cache then skips reading the model), so the
backend needs the ssd_deploy metadata some other way. An ONNX file is one protobuf ``ModelProto``;
``metadata_props`` is its field 14, a repeated ``StringStringEntryProto {key = 1; value = 2}``
(onnx.proto). Every other top-level field is skipped by its wire type: the graph (field 7, tens
of MB of weights) is skipped with one seek, so this costs a few small reads, whatever the model size.
"""

from __future__ import annotations

import os
from typing import BinaryIO

_METADATA_PROPS = 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
# Wire types of the protobuf encoding.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class OnnxMetaError(ValueError):
    """The file is not a readable ONNX protobuf."""


def _varint(f: BinaryIO) -> int | None:
    """The next varint, or ``None`` at a clean end of file."""
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            if shift == 0:
                return None
            raise OnnxMetaError("truncated varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise OnnxMetaError("varint too long")


def _entry(buf: bytes) -> tuple[str, str]:
    """Decode one ``StringStringEntryProto``."""
    pos, key, value = 0, "", ""
    while pos < len(buf):
        tag, pos = _buf_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == _LEN:
            n, pos = _buf_varint(buf, pos)
            text = buf[pos : pos + n].decode("utf-8", errors="replace")
            pos += n
            if field == _ENTRY_KEY:
                key = text
            elif field == _ENTRY_VALUE:
                value = text
        elif wire == _VARINT:
            _, pos = _buf_varint(buf, pos)
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
        else:
            raise OnnxMetaError(f"unexpected wire type {wire} in a metadata entry")
    return key, value


def _buf_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise OnnxMetaError("truncated metadata entry")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """``metadata_props`` of the ONNX file at ``path`` as a dict (empty when it has none)."""
    size = os.path.getsize(path)
    meta: dict[str, str] = {}
    with open(path, "rb") as f:
        while True:
            tag = _varint(f)
            if tag is None:
                return meta
            field, wire = tag >> 3, tag & 7
            if field == 0:
                raise OnnxMetaError("field number 0")
            if wire == _VARINT:
                _varint(f)
            elif wire in (_I64, _I32):
                f.seek(8 if wire == _I64 else 4, os.SEEK_CUR)
            elif wire == _LEN:
                n = _varint(f)
                if n is None or f.tell() + n > size:
                    raise OnnxMetaError("a field runs past the end of the file")
                if field == _METADATA_PROPS:
                    k, v = _entry(f.read(n))
                    meta[k] = v
                else:
                    f.seek(n, os.SEEK_CUR)
            else:
                raise OnnxMetaError(f"unexpected wire type {wire}")
