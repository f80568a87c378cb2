"""Starting (or joining) Ray for a job: a private single-node Ray bound to loopback, or a cluster.

Ray is an optional dependency (the ``batch`` and ``serve`` extras). A Ray that this module starts
listens on 127.0.0.1 only, has no dashboard and sends no usage statistics (docs/batch.md, security).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError, optional_import

#: Object store of a locally started Ray when the caller does not say: enough for a few hundred
#: preprocessed SSD300 images (1.08 MB each) in flight, small enough for a laptop.
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024 * 1024
#: Ray refuses an object store under this size.
MIN_OBJECT_STORE_BYTES = 78 * 1024 * 1024

# Ray picks the node address from the network route unless told it runs without a cluster; with
# this set to 0 the node address is 127.0.0.1 and every Ray process (GCS, raylet, object manager,
# workers) binds to loopback only. Read by ray._private.ray_constants at import time.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _bind_loopback(ray_module: Any) -> None:
    os.environ[_LOOPBACK_ENV] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # When ray was imported before this call the constant was already read; set it as the import
    # would have. It is a private module attribute, so a Ray without it simply keeps its default.
    constants = getattr(getattr(ray_module, "_private", None), "ray_constants", None)
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """Ray's driver start-up installs C-level handlers that abort the process on SIGTERM (exit 134,
    no clean-up); put back the Python handlers this process had, so SIGTERM stays an interrupt that
    runs ``finally`` blocks (ssd_deploy.cli.common) and Ctrl-C stays KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def start_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
    extra: str = "batch",
    include_dashboard: bool = False,
    log_to_driver: bool = True,
    env: dict[str, str] | None = None,
) -> bool:
    """Make sure this process is connected to Ray; returns True when this call started it
    (the caller then calls ``ray.shutdown()`` when done) and False when Ray was already up.

    ``address=None`` (or ``"local"``) starts a private single-node Ray on loopback with
    ``num_cpus`` logical CPUs (default: this machine's) and an object store of
    ``object_store_bytes``; ``env`` is set for every process that Ray starts (only while it
    starts), ``include_dashboard`` puts the dashboard on 127.0.0.1. Any other address (``"auto"``,
    ``"HOST:6379"``, ``"ray://HOST:10001"``) joins that cluster. SIGTERM or Ctrl-C during the
    start-up shut down what was started and raise ``KeyboardInterrupt``.
    """
    ray = optional_import("ray", extra=extra)
    if ray.is_initialized():
        return False
    if address not in (None, "", "local"):
        try:
            with _keep_signal_handlers():
                ray.init(address=address, logging_level="WARNING", configure_logging=True,
                         log_to_driver=log_to_driver)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"--ray {address}: cannot connect to the Ray cluster ({first})") from None
        return True
    store = int(object_store_bytes or DEFAULT_OBJECT_STORE_BYTES)
    if store < MIN_OBJECT_STORE_BYTES:
        raise InputError(f"object store of {store} bytes is below Ray's minimum of {MIN_OBJECT_STORE_BYTES}")
    _bind_loopback(ray)
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with _keep_signal_handlers():
            ray.init(
                address="local",
                num_cpus=int(num_cpus or os.cpu_count() or 1),
                object_store_memory=store,
                include_dashboard=include_dashboard,
                dashboard_host="127.0.0.1",
                log_to_driver=log_to_driver,
                # Nothing reads the metrics of a private Ray (no Prometheus scrapes it).
                _system_config={"enable_metrics_collection": False},
                logging_level="WARNING",
                configure_logging=True,
            )
    except BaseException as e:
        ray.shutdown()  # whatever ray.init started before it failed or was interrupted
        _kill_session_leftovers()
        if isinstance(e, SystemExit) and e.code == signal.SIGTERM:
            # SIGTERM while ray.init runs reaches Ray's own handler (sys.exit(15)): an interrupt.
            raise KeyboardInterrupt from None
        raise
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return True


def _kill_session_leftovers() -> None:
    """Kill what an interrupted ``ray.init`` of this process left running.

    When the start-up is cut short, ``ray.shutdown`` stops the GCS and the raylet but not the
    agents the raylet had started (dashboard and runtime-env agents); orphaned, they linger for
    about a minute. They are found by the files they hold open in this process's session folder
    (Ray names it ``session_<time>_<driver pid>``). Linux only (``/proc``); elsewhere a no-op.
    """
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    sessions = [str(d) for d in root.glob(f"session_*_{os.getpid()}") if d.is_dir()]
    proc = Path("/proc")
    if not sessions or not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            targets = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # gone, or not ours to inspect
            continue
        if any(t.startswith(s) for t in targets for s in sessions):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def local_cpus(actors: int, cpus_per_actor: float) -> int:
    """Logical CPUs for a local Ray running ``actors`` inference actors plus read tasks.

    Logical CPUs are a scheduling notion: never fewer than the actors reserve plus one for the
    read tasks, so asking for more actors than cores oversubscribes instead of waiting forever.
    """
    return max(os.cpu_count() or 1, math.ceil(actors * cpus_per_actor) + 1)
