"""Writing artifacts so that a failure never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    # mkstemp creates 0600 files; artifacts should get the mode a plain open() would give them.
    # The umask can only be read by setting it, so read it once.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def parent_problem(path: str | os.PathLike[str]) -> str | None:
    """Create ``path``'s folder if needed; a one-line reason when nothing can be written there."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"{out}: cannot create the output folder ({e.strerror})"
    if not os.access(parent, os.W_OK):
        return f"{out}: the output folder {parent} is not writable"
    return None


def output_problem(path: str | os.PathLike[str]) -> str | None:
    """Create ``path``'s folder if needed; a one-line reason when the file cannot be written there."""
    out = Path(path)
    if out.is_dir():
        return f"{out}: is a directory, expected a file path"
    return parent_problem(out)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Readers see the old file or the whole new one, never a partial write.
    """
    dst = Path(path)
    parent = dst.parent if str(dst.parent) else Path(".")
    if make_parents:
        parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
