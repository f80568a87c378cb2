"""Benchmark results as a JSON-ready report, CSV rows, rich tables and an optional PNG.

The report (schema ``ssd_deploy.bench/1``) is the one source for every output: tables, CSV and the
plot are all rendered from it, so they cannot disagree.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..ops import jit
from .runner import STAGES, BenchError, Measurement, Settings, Subject
from .stats import paired_ratio

SCHEMA = "ssd_deploy.bench/1"
#: CV (percent) of end-to-end latency above which a result is flagged unstable. trtexec warns at
#: 1 % of GPU compute time; CPU inference on a shared host rarely gets under a few percent, and a
#: warning that always fires is one nobody reads.
DEFAULT_CV_THRESHOLD = 5.0
STAGE_TITLES = {"preprocess": "preprocess", "h2d": "h2d", "compute": "compute", "d2h": "d2h",
                "postprocess": "decode+NMS"}  # fmt: skip
_LIBRARIES = ("ssd_deploy", "numpy", "numba", "onnxruntime", "onnxruntime-gpu", "openvino", "torch",
              "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python", "pillow", "rich")  # fmt: skip


# -- facts about the machine -----------------------------------------------------------------------
def _cpuinfo() -> tuple[str | None, int | None]:
    """CPU model name and number of physical cores from /proc/cpuinfo (Linux), else ``None``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, None
    model = None
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    for line in text.splitlines() + [""]:
        key, _, val = (s.strip() for s in line.partition(":"))
        if key == "model name" and model is None:
            model = val
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
        elif not line.strip():
            if core:
                cores.add((phys, core))
            phys = core = ""
    return model, (len(cores) or None)


def _cgroup_cpus() -> float | None:
    """CPUs granted by a cgroup v2 quota (containers), or ``None`` when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else round(int(quota) / int(period), 2)


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and GPUs of this machine."""
    model, physical = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "physical_cores": physical,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cgroup_cpus": _cgroup_cpus(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpus": _gpus(),
    }


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide the numbers (without importing them)."""
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# -- the report ------------------------------------------------------------------------------------
def engine_info(subject: Subject) -> dict[str, Any]:
    """What an artifact is: backend, precision, model, known cost and batch profile."""
    from ..cost import model_cost

    det = subject.detector
    backend = det.backend
    cfg = det.config
    try:
        cost = model_cost(cfg)
        macs, params = cost.macs, cost.params
    except ValueError:
        macs = params = None
    try:
        described = dict(backend.describe())
    except Exception:  # noqa: BLE001 - a report must not fail over a description
        described = {}
    lo, hi = backend.batch_range
    return {
        "label": subject.label,
        "path": subject.path,
        "backend": getattr(backend, "name", "?"),
        "precision": getattr(backend, "precision", "?"),
        "model": getattr(cfg, "name", "?"),
        "size": getattr(cfg, "size", None),
        "num_classes": getattr(cfg, "num_classes", None),
        "num_priors": getattr(cfg, "num_priors", None),
        "macs_per_image": macs,
        "params": params,
        "batch_range": [lo, hi],
        "options": dict(subject.options),
        # End-to-end artifacts (docs/end_to_end.md): decode + NMS run inside "compute" and the
        # "decode+NMS" stage is only the unpacking of the engine's detections.
        "detect": "engine" if _in_graph(det) else "numpy",
        "describe": {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                     for k, v in described.items()},
    }  # fmt: skip


def _in_graph(det: Any) -> bool:
    try:
        return bool(det.in_graph())
    except Exception:  # noqa: BLE001 - detectors without the method run the numpy Detect
        return False


_IN_ENGINE_NOTE = (
    "* end-to-end artifact: decode + NMS ran in the engine (inside compute); decode+NMS is unpacking"
)


def _stage_cells(report: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """Mean ms per stage of a result row; the decode+NMS cell says when Detect ran in the engine."""
    cells = [fmt_ms(r["stages_ms"][k]["mean"]) for k in STAGES]
    info = next((e for e in report["engines"] if e["label"] == r["engine"]), {})
    if info.get("detect") == "engine":
        cells[STAGES.index("postprocess")] += "*"
    return cells


def _ratio_block(m: Measurement, base: Measurement) -> dict[str, Any]:
    tp = m.throughput / base.throughput if base.throughput > 0 else float("nan")
    lat = m.latency_summary().median / base.latency_summary().median
    walls, base_walls = m.round_walls(), base.round_walls()
    n = min(walls.size, base_walls.size)
    speedup = paired_ratio(base_walls[:n], walls[:n]).to_dict() if n else None
    return {"baseline": base.label, "throughput_ratio": tp, "latency_ratio": lat, "speedup": speedup}


def result_entry(
    m: Measurement, info: dict[str, Any], base: Measurement | None, cv_threshold: float
) -> dict[str, Any]:
    """One artifact at one batch size: throughput, latency distribution, stages, GFLOP/s, ratios."""
    lat = m.latency_summary()
    stages = m.stage_summaries()
    macs = info.get("macs_per_image")
    compute_med_s = stages["compute"].median / 1e3
    entry: dict[str, Any] = {
        "engine": m.label,
        "batch": m.batch,
        "threads": m.threads,
        "block": m.block,
        "warmup_rounds": m.warmup_rounds,
        "rounds": len(m.slots),
        "calls": len(m.calls),
        "images": m.images,
        "wall_s": m.wall,
        "throughput_ips": m.throughput,
        "latency_ms": lat.to_dict(),
        "latency_per_image_ms": lat.median / m.batch,
        "stages_ms": {k: v.to_dict() for k, v in stages.items()},
        # Python glue inside detect() that no stage covers (list handling, result objects).
        "unaccounted_ms": lat.mean - sum(v.mean for v in stages.values()),
        "gflops": 2.0 * macs * m.throughput / 1e9 if macs else None,
        "gflops_compute": (2.0 * macs * m.batch / compute_med_s / 1e9)
        if macs and compute_med_s > 0
        else None,
        "cv_pct": lat.cv_pct,
        "unstable": lat.cv_pct > cv_threshold,
        "vs_baseline": _ratio_block(m, base) if base is not None else None,
        "samples_ms": [round(v * 1e3, 4) for v in m.latencies().tolist()],
        "round_walls_ms": [round(v * 1e3, 4) for v in m.round_walls().tolist()],
    }
    return entry


def build_report(
    subjects: Sequence[Subject],
    measurements: Sequence[Measurement],
    settings: Settings,
    *,
    baseline: str | None = None,
    cv_threshold: float = DEFAULT_CV_THRESHOLD,
    command: Sequence[str] = (),
    inputs: dict[str, Any] | None = None,
    started: str = "",
    load_before: list[float] | None = None,
    load_after: list[float] | None = None,
    intra_op_threads: int | None = None,
) -> dict[str, Any]:
    """The whole run as one JSON-ready dict (schema :data:`SCHEMA`)."""
    labels = [s.label for s in subjects]
    base_label = baseline or labels[0]
    if base_label not in labels:
        raise BenchError(f"--baseline {base_label!r} is not one of the engines ({', '.join(labels)})")
    infos = {s.label: engine_info(s) for s in subjects}
    by_key = {(m.label, m.batch): m for m in measurements}
    results = []
    for m in measurements:
        base = by_key.get((base_label, m.batch))
        results.append(result_entry(m, infos[m.label], base, cv_threshold))
    machine = machine_info()
    header = {
        "tool": "ssd-bench",
        "command": list(command),
        "started": started,
        "machine": machine,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "versions": library_versions(),
        "pre_post_processing": jit.status(),
        "threads": {"clients": settings.threads, "intra_op": intra_op_threads or "library default"},
        "settings": {
            "batches": list(settings.batches), "warmup_rounds": settings.warmup,
            "iterations": settings.iterations, "duration_s": settings.duration,
            "block": settings.block, "cv_threshold_pct": cv_threshold, "order": "interleaved round-robin",
        },
        "inputs": inputs or {},
        "precision": {lab: info["precision"] for lab, info in infos.items()},
    }  # fmt: skip
    return {
        "schema": SCHEMA,
        "header": header,
        "baseline": base_label,
        "engines": [infos[lab] for lab in labels],
        "results": results,
        "warnings": _warnings(results, machine, load_before, cv_threshold),
    }


def _warnings(
    results: list[dict[str, Any]],
    machine: dict[str, Any],
    load_before: list[float] | None,
    cv_threshold: float,
) -> list[str]:
    out = []
    cpus = machine.get("cgroup_cpus") or machine.get("usable_cpus") or 1
    if load_before and load_before[0] > 0.5 * cpus:
        out.append(
            f"the machine was busy before the run (1-min load average {load_before[0]:.2f} on {cpus} CPUs): "
            "absolute numbers are pessimistic, ratios from this interleaved run are the figures to quote"
        )
    for r in results:
        if r["unstable"]:
            out.append(
                f"{r['engine']} batch {r['batch']}: end-to-end latency is unstable (CV {r['cv_pct']:.1f} % > "
                f"{cv_threshold:g} %); quote medians and the paired speedup, not means"
            )
        if r["calls"] < 20:
            out.append(
                f"{r['engine']} batch {r['batch']}: only {r['calls']} timed calls; p95/p99 are close to or "
                "equal to the max (trtexec's percentile definition)"
            )
    return out


# -- files -------------------------------------------------------------------------------------------
CSV_COLUMNS: tuple[str, ...] = (
    "engine", "backend", "precision", "path", "batch", "threads", "rounds", "calls", "images", "wall_s",
    "throughput_ips", "lat_min_ms", "lat_mean_ms", "lat_median_ms", "lat_p90_ms", "lat_p95_ms", "lat_p99_ms",
    "lat_max_ms", "lat_cv_pct", "preprocess_mean_ms", "h2d_mean_ms", "compute_mean_ms", "d2h_mean_ms",
    "postprocess_mean_ms", "gflops", "unstable", "baseline", "throughput_ratio", "speedup_median",
    "speedup_low", "speedup_high",
)  # fmt: skip


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per engine and batch size, columns :data:`CSV_COLUMNS`."""
    infos = {e["label"]: e for e in report["engines"]}
    rows = []
    for r in report["results"]:
        info = infos[r["engine"]]
        lat = r["latency_ms"]
        vs = r["vs_baseline"] or {}
        sp = vs.get("speedup") or {}
        row = {
            "engine": r["engine"], "backend": info["backend"], "precision": info["precision"],
            "path": info["path"], "batch": r["batch"], "threads": r["threads"], "rounds": r["rounds"],
            "calls": r["calls"],
            "images": r["images"], "wall_s": r["wall_s"], "throughput_ips": r["throughput_ips"],
            **{f"lat_{k}_ms": lat[k] for k in ("min", "mean", "median", "p90", "p95", "p99", "max")},
            "lat_cv_pct": lat["cv_pct"],
            **{f"{s}_mean_ms": r["stages_ms"][s]["mean"] for s in STAGES},
            "gflops": r["gflops"], "unstable": r["unstable"], "baseline": vs.get("baseline", ""),
            "throughput_ratio": vs.get("throughput_ratio"), "speedup_median": sp.get("median"),
            "speedup_low": sp.get("low"), "speedup_high": sp.get("high"),
        }  # fmt: skip
        rows.append(row)
    return rows


def check_writable(path: str | os.PathLike[str], what: str) -> None:
    """Fail before measuring if an output cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise BenchError(f"{p}: {what} path is a directory")
    if not parent.is_dir():
        raise BenchError(f"{p}: folder {parent} for the {what} does not exist")
    if not os.access(parent, os.W_OK):
        raise BenchError(f"{p}: folder {parent} for the {what} is not writable")


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by ``None``, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    atomic_write(path, (json.dumps(_finite(report), indent=2, allow_nan=False) + "\n").encode())


def write_csv(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in csv_rows(report):
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write(path, buf.getvalue().encode())


def require_matplotlib() -> Any:
    """Import matplotlib with a headless backend, or fail with the install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'ssd_deploy[bench]'") from None
    return plt


def write_plot(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Latency distribution per engine and batch (box plot) and throughput against batch size."""
    plt = require_matplotlib()
    results = report["results"]
    labels = [e["label"] for e in report["engines"]]
    batches = sorted({r["batch"] for r in results})
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(12, 4.8))
    data, names = [], []
    for b in batches:
        for lab in labels:
            r = next((x for x in results if x["engine"] == lab and x["batch"] == b), None)
            if r is not None:
                data.append(r["samples_ms"])
                names.append(f"{lab} b{b}")
    ax_lat.boxplot(data, showfliers=True)
    ax_lat.set_xticks(range(1, len(names) + 1), names, fontsize=8, rotation=30, ha="right")
    ax_lat.set_ylabel("end-to-end latency per call (ms)")
    ax_lat.set_title("Latency distribution")
    ax_lat.grid(axis="y", alpha=0.3)
    for lab in labels:
        pts = sorted((r["batch"], r["throughput_ips"]) for r in results if r["engine"] == lab)
        ax_tp.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)
    ax_tp.set_xscale("log", base=2)
    ax_tp.set_xticks(batches, [str(b) for b in batches])
    ax_tp.set_xlabel("batch size")
    ax_tp.set_ylabel("throughput (images/s)")
    ax_tp.set_title("Throughput vs batch")
    ax_tp.set_ylim(bottom=0)
    ax_tp.grid(alpha=0.3)
    ax_tp.legend(fontsize=8)
    m = report["header"]["machine"]
    fig.suptitle(f"ssd-bench on {m['cpu']} ({m['usable_cpus']} CPUs), "
                 f"{report['header']['threads']['clients']} client thread(s)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


# -- terminal ----------------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_ms(v: float | None) -> str:
    """Milliseconds with about four significant digits, so wide values do not overflow a terminal;
    "-" for none and for exactly zero (a stage the backend does not have)."""
    if v is None or v == 0:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def render(report: dict[str, Any], console: Any) -> None:
    """Print the header, results, stage breakdown and warnings as rich tables."""
    from rich import box
    from rich.markup import escape as esc
    from rich.table import Table

    h = report["header"]
    m = h["machine"]
    cores = f"{m['physical_cores']} cores / " if m.get("physical_cores") else ""
    quota = f", cgroup quota {m['cgroup_cpus']} CPUs" if m.get("cgroup_cpus") else ""
    console.print(f"[bold]ssd-bench[/bold]  {esc(str(m['cpu']))}  {cores}{m['usable_cpus']} usable "
                  f"CPUs{quota}, {m['memory_gib']} GiB, {m['os']}")  # fmt: skip
    if m.get("gpus"):
        console.print(f"GPU: {esc('; '.join(m['gpus']))}")
    console.print(esc("versions: " + ", ".join(f"{k} {v}" for k, v in h["versions"].items())))
    console.print(esc(f"pre/post-processing: {h.get('pre_post_processing', '?')}"))
    s = h["settings"]
    amount = (
        f"{s['iterations']} rounds" if s["iterations"] is not None else f"~{s['duration_s']:g} s per engine"
    )
    console.print(
        f"client threads {h['threads']['clients']}, intra-op threads {h['threads']['intra_op']}; "
        f"warm-up {s['warmup_rounds']} rounds, {amount}, interleaved; load average before "
        f"{h['load_average_before']} after {h['load_average_after']}"
    )

    def table(title: str, *cols: str) -> Any:
        t = Table(
            title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
        )
        for col in cols:
            left = col in ("engine", "backend", "model", "precision")
            t.add_column(col, justify="left" if left else "right", no_wrap=True)
        return t

    eng = table("Engines", "engine", "backend", "precision", "model", "GMAC/img", "batches")
    for e in report["engines"]:
        lo, hi = e["batch_range"]
        gmac = _f(e["macs_per_image"] / 1e9, 2) if e["macs_per_image"] else "-"
        eng.add_row(
            esc(e["label"]),
            esc(e["backend"]),
            esc(e["precision"]),
            esc(e["model"]),
            gmac,
            f"{lo}..{hi or 'any'}",
        )
    console.print(eng)
    for e in report["engines"]:
        console.print(esc(f"  {e['label']}: {e['path']}"), style="dim")

    tp = table(f"Throughput (baseline {report['baseline']})", "engine", "batch", "img/s", "ms/img", "GFLOP/s",
               "CV %", "speedup [95% CI]")  # fmt: skip
    lat = table("End-to-end latency per call (ms)", "engine", "batch", "min", "mean", "median", "p90", "p95",
                "p99", "max")  # fmt: skip
    for r in report["results"]:
        q = r["latency_ms"]
        vs = r["vs_baseline"]
        sp = vs["speedup"] if vs else None
        speed = "-" if sp is None else esc(f"{sp['median']:.2f}x [{sp['low']:.2f}, {sp['high']:.2f}]")
        cv = f"[yellow]{q['cv_pct']:.1f}[/yellow]" if r["unstable"] else f"{q['cv_pct']:.1f}"
        tp.add_row(esc(r["engine"]), str(r["batch"]), _f(r["throughput_ips"], 2),
                   fmt_ms(1e3 / r["throughput_ips"]), _f(r["gflops"]), cv, speed)  # fmt: skip
        lat.add_row(
            esc(r["engine"]),
            str(r["batch"]),
            *(fmt_ms(q[k]) for k in ("min", "mean", "median", "p90", "p95", "p99", "max")),
        )
    console.print(tp)
    console.print("speedup: median over interleaved rounds of baseline time / engine time", style="dim")
    console.print(lat)

    st = table("Stages (mean ms per call)", "engine", "batch", *STAGE_TITLES.values(), "other", "total")
    for r in report["results"]:
        st.add_row(esc(r["engine"]), str(r["batch"]), *map(esc, _stage_cells(report, r)),
                   fmt_ms(r["unaccounted_ms"]),
                   fmt_ms(r["latency_ms"]["mean"]))  # fmt: skip
    console.print(st)
    if any(e.get("detect") == "engine" for e in report["engines"]):
        console.print(_IN_ENGINE_NOTE, style="dim")
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {esc(w)}")


# -- markdown ----------------------------------------------------------------------------------------
def markdown(report: dict[str, Any], title: str = "ssd-bench results") -> str:
    """The report as a Markdown page: command, machine header, engines, results, stages, warnings."""
    h = report["header"]
    m = h["machine"]
    s = h["settings"]
    amount = (
        f"{s['iterations']} measured rounds"
        if s["iterations"] is not None
        else f"~{s['duration_s']:g} s per engine"
    )
    lines = [
        f"# {title}",
        "",
        f"Command: `{' '.join(h['command'])}`  ",
        f"Started: {h['started']}",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['physical_cores'] or '?'} physical, {m['logical_cpus']} logical, "
        f"{m['usable_cpus']} usable"
        + (f", cgroup quota {m['cgroup_cpus']}" if m.get("cgroup_cpus") else "") + " |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| OS / Python | {m['os']} / {m['python']} |",
        f"| GPU | {'; '.join(m['gpus']) or 'none'} |",
        f"| load average (1/5/15 min) | before {h['load_average_before']}, after {h['load_average_after']} |",
        f"| versions | {', '.join(f'{k} {v}' for k, v in h['versions'].items())} |",
        f"| pre/post-processing | {h.get('pre_post_processing', '?')} |",
        f"| threads | {h['threads']['clients']} client, intra-op {h['threads']['intra_op']} |",
        f"| schedule | {s['warmup_rounds']} warm-up rounds, {amount}, {s['block']} call(s) per slot, "
        f"{s['order']} |",
        f"| inputs | {h['inputs'].get('count', '?')} photos from {h['inputs'].get('source', '?')}"
        + (", decoded before timing" if h["inputs"].get("decoded_before_timing")
           else ", decoded inside preprocess")
        + " |",
        "",
        "## Engines",
        "",
        "| engine | backend | precision | model | GMAC/img | batch profile | path |",
        "|---|---|---|---|---:|---|---|",
    ]  # fmt: skip
    for e in report["engines"]:
        lo, hi = e["batch_range"]
        gmac = _f(e["macs_per_image"] / 1e9, 2) if e["macs_per_image"] else "-"
        lines.append(f"| {e['label']} | {e['backend']} | {e['precision']} | {e['model']} | {gmac} | "
                     f"{lo}..{hi or 'any'} | `{e['path']}` |")  # fmt: skip
    lines += [
        "",
        f"## End-to-end latency per call (ms) and throughput; baseline `{report['baseline']}`",
        "",
        "| engine | batch | img/s | min | mean | median | p90 | p95 | p99 | max | CV % "
        "| GFLOP/s | speedup [95% CI] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        lat = r["latency_ms"]
        sp = (r["vs_baseline"] or {}).get("speedup")
        speed = "-" if sp is None else f"{sp['median']:.2f}x [{sp['low']:.2f}, {sp['high']:.2f}]"
        cv = f"{lat['cv_pct']:.1f}" + (" (unstable)" if r["unstable"] else "")
        vals = " | ".join(fmt_ms(lat[k]) for k in ("min", "mean", "median", "p90", "p95", "p99", "max"))
        lines.append(f"| {r['engine']} | {r['batch']} | {_f(r['throughput_ips'], 2)} | {vals} | {cv} | "
                     f"{_f(r['gflops'])} | {speed} |")  # fmt: skip
    lines += [
        "",
        "## Stages (mean ms per call)",
        "",
        "| engine | batch | " + " | ".join(STAGE_TITLES.values()) + " | other | end-to-end |",
        "|---|---:|" + "---:|" * (len(STAGES) + 2),
    ]
    for r in report["results"]:
        means = " | ".join(_stage_cells(report, r))
        lines.append(f"| {r['engine']} | {r['batch']} | {means} | {fmt_ms(r['unaccounted_ms'])} | "
                     f"{fmt_ms(r['latency_ms']['mean'])} |")  # fmt: skip
    if any(e.get("detect") == "engine" for e in report["engines"]):
        lines += ["", _IN_ENGINE_NOTE]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def write_markdown(
    report: dict[str, Any], path: str | os.PathLike[str], title: str = "ssd-bench results"
) -> None:
    atomic_write(path, markdown(report, title).encode())
