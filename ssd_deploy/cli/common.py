"""What every command shares: the parser, flag groups, value checks, the error printer and exit codes.

A command module defines ``build_parser()`` and ``execute(args) -> int`` and its ``main`` is
``run(build_parser, execute, argv)``. ``run`` turns :class:`~ssd_deploy.errors.SSDDeployError` and
``OSError`` into one line on stderr and exit 2 (or the error's own ``exit_code``), Ctrl-C and
SIGTERM into exit 130 after the ``finally``/context-manager clean-up has run (so no half-written
file stays behind: :mod:`ssd_deploy.fileio`), and lets anything else through as the bug it is.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, InputError, SSDDeployError, one_line

#: Backends a ``--device`` flag may name (docs/architecture.md): ``auto`` picks the fastest present.
DEVICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an interrupt so clean-up runs exactly as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default in --help (only where one is set) and keeps descriptions as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every other bad input
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser for the command ``prog`` (its console-script name)."""
    return _Parser(prog=prog, description=description, formatter_class=_HelpFormatter)


def print_error(message: str) -> None:
    """The one way a command reports a problem: ``error: <one line>`` on stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def run(
    build_parser: Callable[[], argparse.ArgumentParser],
    execute: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``execute`` and map its outcome to the exit-code policy."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_BAD_INPUT
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(execute(args))
    except KeyboardInterrupt as e:
        print_error("terminated" if isinstance(e, Terminated) else "interrupted")
        return EXIT_INTERRUPTED
    except SSDDeployError as e:
        print_error(one_line(e))
        return e.exit_code
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
        print_error(where + (e.strerror or one_line(e)))
        return EXIT_BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# -- value checks (argparse ``type=`` callables: a bad value is a one-line usage error) --------------
def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a{'n integer' if kind is int else ' number'}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def finite_float(text: str) -> float:
    return _number(text, float)


def unit_interval(text: str) -> float:
    """A threshold in [0, 1]."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def int_list(minimum: int, example: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type for comma-separated integers, each at least ``minimum`` (e.g. ``1,8,32``)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {minimum} like {example}, got {text!r}"
            )
        return values

    return parse


def existing_file(text: str) -> Path:
    p = Path(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text}: {'is a directory' if p.is_dir() else 'no such file'}")
    return p


def output_file(path: str | os.PathLike[str], *, suffixes: Sequence[str] = ()) -> Path:
    """Check an output path before any work: its suffix, that it is not a folder, that its folder
    exists (or can be made) and is writable. Raises :class:`InputError`."""
    from ..fileio import output_problem

    out = Path(path)
    if out.is_dir():
        raise InputError(f"{out}: is a directory, expected a file path")
    if suffixes and out.suffix.lower() not in suffixes:
        raise InputError(f"{out}: expected a {' or '.join(suffixes)} file")
    problem = output_problem(out)
    if problem:
        raise InputError(problem)
    return out


# -- flag groups ---------------------------------------------------------------------------------------
def add_engine(p: argparse.ArgumentParser, *, multiple: bool = False, required: bool = True) -> None:
    """``--engine ARTIFACT`` (repeatable with ``multiple``): .onnx, .plan, .xml or a PyTorch checkpoint."""
    helptext = "artifact: .onnx, .plan/.engine (TensorRT), .xml (OpenVINO IR) or .pth checkpoint"
    if multiple:
        p.add_argument(
            "--engine",
            action="append",
            required=required,
            metavar="ARTIFACT",
            help=helptext + " (repeat to compare several)",
        )
    else:
        p.add_argument("--engine", required=required, metavar="ARTIFACT", help=helptext)


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device``: which backend runs an ``.onnx`` artifact (other file types have one)."""
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="backend for .onnx files: auto = ONNX Runtime on CUDA when present, else OpenVINO when "
        "installed, else ONNX Runtime CPU (default: auto)",
    )


def add_detect_overrides(p: argparse.ArgumentParser) -> None:
    """Per-run Detect thresholds; unset ones come from the artifact's metadata."""
    g = p.add_argument_group("Detect (default: the artifact's own settings)")
    g.add_argument("--conf-thresh", type=unit_interval, default=None, help="keep scores above this")
    g.add_argument("--nms-thresh", type=unit_interval, default=None, help="NMS IoU threshold")
    g.add_argument("--top-k", type=positive_int, default=None, help="NMS candidates per class")
    g.add_argument(
        "--keep-top-k",
        type=_keep_top_k,
        default="model",
        help="cap on detections per image: a number, 'none' for no cap, or 'model' "
        "for the artifact's own setting (default: model)",
    )


def _keep_top_k(text: str) -> int | None | str:
    if text.lower() in ("model", "none"):
        return text.lower()
    return positive_int(text)


def detect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``Detector.detect`` from :func:`add_detect_overrides`'s flags."""
    out: dict[str, Any] = {
        "conf_thresh": args.conf_thresh,
        "nms_thresh": args.nms_thresh,
        "top_k": args.top_k,
    }
    if args.keep_top_k != "model":
        out["keep_top_k"] = None if args.keep_top_k == "none" else args.keep_top_k
    return out


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision``: run an FP32 graph at reduced precision where the backend offers it (opt-in)."""
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto/fp32 = what the artifact says (FP32 graphs run in FP32); bf16 = OpenVINO's "
        "BF16 inference on CPUs that have it",
    )


def backend_options(args: argparse.Namespace, engine: str | os.PathLike[str]) -> dict[str, Any]:
    """Backend keyword arguments for ``Detector.load`` from :func:`add_device`/:func:`add_precision`."""
    from ..contract import artifact_kind

    opts: dict[str, Any] = {}
    kind = artifact_kind(engine)
    device = getattr(args, "device", "auto")
    if device not in (None, "auto"):
        if kind != "onnx":
            raise InputError(f"--device {device} applies to .onnx engines, not {engine}")
        opts["device"] = device
    precision = getattr(args, "precision", "auto")
    if precision not in (None, "auto"):
        if kind not in ("onnx", "openvino"):
            raise InputError(
                f"--precision {precision} applies to .onnx/.xml engines (OpenVINO), not {engine}"
            )
        opts["precision"] = precision
    return opts


def open_detector(args: argparse.Namespace, engine: str | os.PathLike[str] | None = None) -> Any:
    """``Detector.load`` for ``--engine`` with the device and precision flags applied."""
    from ..runtime import Detector

    path = engine if engine is not None else args.engine
    return Detector.load(path, **backend_options(args, path))
