"""The library behind ``ssd-bench``: trtexec-style statistics, interleaved runs, reports."""

from .report import (
    SCHEMA,
    build_report,
    csv_rows,
    markdown,
    render,
    write_csv,
    write_json,
    write_markdown,
    write_plot,
)
from .runner import (
    STAGES,
    BenchError,
    Measurement,
    Settings,
    Subject,
    interleaved_schedule,
    open_subject,
    run_benchmark,
)
from .stats import Summary, coefficient_of_variation, paired_ratio, summarize, trt_median, trt_percentile

__all__ = [
    "SCHEMA",
    "STAGES",
    "BenchError",
    "Measurement",
    "Settings",
    "Subject",
    "Summary",
    "build_report",
    "coefficient_of_variation",
    "csv_rows",
    "interleaved_schedule",
    "markdown",
    "open_subject",
    "paired_ratio",
    "render",
    "run_benchmark",
    "summarize",
    "trt_median",
    "trt_percentile",
    "write_csv",
    "write_json",
    "write_markdown",
    "write_plot",
]  # fmt: skip
