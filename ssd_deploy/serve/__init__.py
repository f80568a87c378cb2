"""Serving: the runtime behind an HTTP API on Ray Serve (Triton repositories: :mod:`ssd_deploy.triton`).

Ray is an optional dependency (``pip install 'ssd_deploy[serve]'``); it is imported only when
the Ray parts are used: ``from ssd_deploy.serve import ServeOptions, start``.
"""

from __future__ import annotations

from typing import Any

_APP_NAMES = ("ServeOptions", "RunningService", "ServeError", "build_app", "start")

__all__ = list(_APP_NAMES)


def __getattr__(name: str) -> Any:
    if name in _APP_NAMES:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
