"""A TensorRT logger that keeps the errors (so failures can be reported in one line) and
optionally echoes messages to a callable."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any


def make_logger(trt: ModuleType, echo: Callable[[str], None] | None = None, verbose: bool = False) -> Any:
    """An ``ILogger`` subclass instance with ``errors`` (list of messages) and ``last_error()``.

    Warnings (and info messages when ``verbose``) go to ``echo``. The class is made here because
    the TensorRT module is only imported at call time.
    """
    rank = {
        trt.ILogger.Severity.INTERNAL_ERROR: 0,
        trt.ILogger.Severity.ERROR: 1,
        trt.ILogger.Severity.WARNING: 2,
        trt.ILogger.Severity.INFO: 3,
        trt.ILogger.Severity.VERBOSE: 4,
    }
    threshold = 3 if verbose else 2

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            # pybind11 trampolines need the base initialiser, or TensorRT calls into nothing.
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            # Called from TensorRT's threads: an exception escaping here would cross into C++.
            try:
                level = rank.get(severity, 4)
                if level <= 1:
                    with self._lock:
                        self.errors.append(str(msg))
                if echo is not None and level <= threshold:
                    echo(f"[TensorRT {getattr(severity, 'name', severity)}] {msg}")
            except Exception:
                pass

        def last_error(self, default: str = "no error message from TensorRT") -> str:
            with self._lock:
                text = self.errors[-1] if self.errors else default
            return " ".join(text.split())

    return _Logger()
