"""The one exception base of ssd_deploy, one message formatter and one lazy-import idiom.

Every error the toolkit raises on purpose derives from :class:`SSDDeployError` (and keeps the
builtin parent callers already catch, e.g. ``ValueError`` for bad configs). Its message is one line
that names the file or option at fault; the command-line layer (:mod:`ssd_deploy.cli.common`)
prints it and exits with :attr:`SSDDeployError.exit_code`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Exit codes shared by every command (docs/architecture.md).
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class SSDDeployError(Exception):
    """Base class of ssd_deploy's errors: a one-line message for a user, not a bug."""

    #: What a command exits with when this error ends it.
    exit_code: int = EXIT_BAD_INPUT


class InputError(SSDDeployError, ValueError):
    """An input file, image, option value or request the toolkit cannot use."""


class MissingDependency(SSDDeployError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def optional_import(
    module: str, *, extra: str | None = None, purpose: str = "", package: str | None = None
) -> ModuleType:
    """Import an optional dependency, or raise :class:`MissingDependency` saying what to install.

    ``extra`` names the ssd_deploy extra that brings it (``pip install 'ssd_deploy[extra]'``);
    ``package`` is the pip name when it differs from the module name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        root = module.split(".")[0]
        missing = getattr(e, "name", None)
        if missing is not None and not module.startswith(missing) and not missing.startswith(root):
            raise  # the package is there but something it imports is broken: a bug to see in full
        how = f"pip install 'ssd_deploy[{extra}]'" if extra else f"pip install {package or root}"
        what = f" ({purpose})" if purpose else ""
        raise MissingDependency(f"{package or root} is not installed{what}: {how}") from None
