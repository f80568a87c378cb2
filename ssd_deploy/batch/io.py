"""What a dataset run reads (the image list) and writes (a folder of part files), resumably.

Output layout: ``OUT.parquet/`` or ``OUT.jsonl/`` is a folder of ``part-<run>-<n>.<ext>`` files
(Ray's and Spark's convention: ``pandas.read_parquet("OUT.parquet")``, DuckDB's
``'OUT.parquet/*.parquet'`` and :func:`read_results` read it whole) plus ``_ssd_detect.json`` (the
engine and settings that made it). Each part is written under a hidden temporary name and renamed
when complete, so a killed run leaves only whole parts; a ``--resume`` run reads the paths of those
parts, skips them and adds parts of its own, so every image appears exactly once.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, optional_import
from ..fileio import atomic_output, atomic_write
from ..samples import IMAGE_SUFFIXES
from .rows import COLUMNS, schema

#: Output suffix -> format name.
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}
META_NAME = "_ssd_detect.json"
#: Result rows per part file: about 100 KB to 1 MB of Parquet; a killed run loses at most this many.
DEFAULT_PART_ROWS = 1000


# -- inputs -----------------------------------------------------------------------------------------
def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and _is_image(f))
    return found


def _read_list(list_file: Path) -> list[str]:
    base = list_file.parent
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(
            f"{list_file}: not a text file list of image paths (and not an image suffix)"
        ) from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(str(base / os.path.expanduser(line)))  # an absolute line stays absolute
    return out


def list_inputs(spec: str | os.PathLike[str]) -> list[str]:
    """The images ``spec`` names, as absolute paths, sorted within a folder or glob, each once.

    ``spec`` is a folder (searched recursively for image files, hidden ones skipped), a glob
    (``"photos/**/*.jpg"``; ``**`` crosses folders), one image file, or a text file listing one
    path per line (relative paths are relative to the list's folder; blank lines and ``#``
    comments are skipped; a listed file that is missing or unreadable becomes an error row).
    Raises :class:`InputError` when nothing matches.
    """
    text = os.fspath(spec)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        found, what = (
            _walk(str(path)),
            f"{text}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})",
        )
    elif path.is_file():
        found = [str(path)] if _is_image(str(path)) else _read_list(path)
        what = f"{text}: the list names no image"
    elif glob.has_magic(text):
        found = sorted(p for p in glob.glob(os.path.expanduser(text), recursive=True)
                       if _is_image(p) and os.path.isfile(p))  # fmt: skip
        what = f"{text}: the pattern matches no image file"
    else:
        raise InputError(f"{text}: no such file or folder")
    paths = list(dict.fromkeys(os.path.abspath(p) for p in found))
    if not paths:
        raise InputError(what)
    return paths


# -- output -----------------------------------------------------------------------------------------
def output_format(out: str | os.PathLike[str]) -> str:
    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise InputError(f"{out}: unknown output type; name it OUT.parquet or OUT.jsonl")
    return fmt


def check_output(out: str | os.PathLike[str], *, resume: bool) -> tuple[Path, str]:
    """Check the output before any work: a known suffix, an existing writable parent folder, and
    (without ``resume``) nothing there yet. Creates nothing. Returns ``(path, format)``."""
    path = Path(out)
    fmt = output_format(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: the output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{out}: the output folder {parent} is not writable")
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{out}: exists and is not a results folder made by ssd-detect")
        if not resume:
            raise InputError(f"{out}: already exists; pass --resume to add the missing images, or remove it")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{out}: not writable")
    return path, fmt


def part_files(out: Path, fmt: str) -> list[Path]:
    """The complete part files of a results folder, in name order."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.glob(f"part-*.{fmt}") if p.is_file())


def read_meta(out: Path) -> dict[str, Any] | None:
    p = out / META_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: unreadable ({e})") from None


def _read_part(part: Path, fmt: str, columns: Sequence[str] | None = None) -> Any:
    pa = optional_import("pyarrow", extra="batch")
    if fmt == "parquet":
        pq = optional_import("pyarrow.parquet", extra="batch", package="pyarrow")
        return pq.read_table(part, columns=list(columns) if columns else None, schema=schema())
    rows = []
    with open(part, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise InputError(f"{part}:{n}: not a JSON line") from None
    table = pa.Table.from_pylist(rows, schema=schema())
    return table.select(list(columns)) if columns else table


def done_paths(out: Path, fmt: str) -> set[str]:
    """Paths already in the results folder (for ``--resume``)."""
    done: set[str] = set()
    for part in part_files(out, fmt):
        done.update(_read_part(part, fmt, ["path"]).column("path").to_pylist())
    return done


def remove_stale_temporaries(out: Path) -> int:
    """Delete part files a killed run left half-written (hidden ``.part-*.tmp``); returns how many.
    Only one run may write a results folder at a time, so any such file is stale."""
    n = 0
    if out.is_dir():
        for tmp in out.glob(".part-*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def read_results(out: str | os.PathLike[str]) -> Any:
    """All rows of a results folder (``OUT.parquet`` or ``OUT.jsonl``) as one pyarrow Table."""
    pa = optional_import("pyarrow", extra="batch")
    path = Path(out)
    fmt = output_format(path)
    if not path.is_dir():
        raise InputError(f"{out}: no such results folder")
    tables = [_read_part(p, fmt) for p in part_files(path, fmt)]
    return pa.concat_tables(tables) if tables else schema().empty_table()


class PartWriter:
    """Buffers result rows and writes them as whole part files (temp name, then rename).

    Creates the results folder and its ``_ssd_detect.json`` with the first part, so a run that
    fails before any result leaves nothing behind.
    """

    def __init__(self, out: Path, fmt: str, meta: dict[str, Any], rows_per_part: int = DEFAULT_PART_ROWS):
        if rows_per_part < 1:
            raise InputError(f"rows per part must be >= 1, got {rows_per_part}")
        self.out, self.fmt, self.meta, self.rows_per_part = out, fmt, meta, rows_per_part
        # Unique per run so that a resumed run never collides with an earlier run's part names.
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        self._buffer: list[Any] = []
        self._buffered = 0
        self._seq = 0
        self.rows_written = 0
        self.parts_written = 0

    def add(self, table: Any) -> None:
        if table.num_rows == 0:
            return
        # Ray may hand back its own (equal-valued) variant of the schema; parts all get ours.
        self._buffer.append(table.select(list(COLUMNS)).cast(schema()))
        self._buffered += table.num_rows
        if self._buffered >= self.rows_per_part:
            self.flush()

    @property
    def rows_done(self) -> int:
        """Rows written plus rows buffered for the next part."""
        return self.rows_written + self._buffered

    def add_many(self, tables: Iterable[Any]) -> None:
        for t in tables:
            self.add(t)

    def flush(self) -> None:
        """Write the buffered rows (if any) as one more part file."""
        if not self._buffer:
            return
        pa = optional_import("pyarrow", extra="batch")
        table = pa.concat_tables(self._buffer)
        if not self.out.exists():
            self.out.mkdir()
        if not (self.out / META_NAME).exists():
            atomic_write(self.out / META_NAME, json.dumps(self.meta, indent=1).encode())
        dst = self.out / f"part-{self.run_id}-{self._seq:05d}.{self.fmt}"
        with atomic_output(dst, make_parents=False) as tmp:
            # atomic_output's temporary is ".<name>.<random>.tmp": hidden, so readers skip it.
            if self.fmt == "parquet":
                pq = optional_import("pyarrow.parquet", extra="batch", package="pyarrow")
                pq.write_table(table, tmp, compression="zstd")
            else:
                with open(tmp, "w", encoding="utf-8") as f:
                    for row in table.to_pylist():
                        f.write(json.dumps(row, separators=(",", ":"), allow_nan=False))
                        f.write("\n")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        self._seq += 1
        self.parts_written += 1
        self.rows_written += table.num_rows
        self._buffer, self._buffered = [], 0
