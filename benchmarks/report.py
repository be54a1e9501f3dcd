"""What a bench run leaves behind: the table, the JSON file (with the environment) and the chart."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from .framework import Measurement

REPORT_FORMAT = 1
"""Version of the JSON layout (bump when a field changes meaning)."""

PACKAGES: tuple[str, ...] = (
    "studyin-analytics",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-asgi",
    "redis",
    "hiredis",
    "asyncpg",
    "msgpack",
    "protobuf",
    "pydantic",
    "fastapi",
    "starlette",
    "uvicorn",
    "matplotlib",
)
"""Distributions whose versions go into the environment record."""

_TO_MICROSECONDS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


@dataclass
class BenchRun:
    """How one registered benchmark went (one per benchmark, besides its rows)."""

    name: str
    seconds: float
    error: str | None = None


@dataclass
class RunReport:
    quick: bool
    started_at: str
    seconds: float = 0.0
    rows: list[Measurement] = field(default_factory=list)
    runs: list[BenchRun] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(r.error for r in self.rows) or any(r.error for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "quick": self.quick,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "ok": not self.failed,
            "environment": self.environment,
            "benchmarks": [
                {"name": r.name, "seconds": round(r.seconds, 3), "error": r.error} for r in self.runs
            ],
            "results": [_json_safe(r.as_dict()) for r in self.rows],
        }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# --- environment ---------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _protobuf_backend() -> str | None:
    try:
        from google.protobuf.internal import api_implementation
    except ImportError:
        return None
    return str(api_implementation.Type())


def environment() -> dict[str, Any]:
    """Where and with what the figures were measured (for comparing runs later)."""
    import psutil

    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count() or 0
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": _versions(),
        "protobuf_backend": _protobuf_backend(),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": usable_cpus,
        "cpu_model": _cpu_model(),
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "load_average": list(os.getloadavg()),
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
    }


# --- table ------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def baselines(report: RunReport) -> list[str]:
    """``measure: baseline`` lines (the table has no room for the baselines' descriptions)."""
    return [f"{r.name}: {r.baseline_name}" for r in report.rows if r.baseline_name and r.baseline is not None]


def table(report: RunReport) -> Table:
    mode = "quick" if report.quick else "full"
    result = Table(title=f"studyin-analytics bench ({mode}, {report.started_at})")
    for column in ("measure", "value", "unit", "baseline", "ratio", "target", "met?"):
        result.add_column(
            column,
            justify="left" if column in {"measure", "unit", "target"} else "right",
            overflow="fold",
            ratio=3 if column == "measure" else None,
        )
    for row in report.rows:
        if row.error and math.isnan(row.value):
            result.add_row(row.name, Text("error", style="bold red"), "", "", "", row.target or "", "✗")
            continue
        ratio = row.ratio
        baseline = fmt(row.baseline)
        met = "–" if row.met is None else ("✓" if row.met else "✗")
        met_style = "" if row.met is None else ("green" if row.met else "red")
        if row.error:
            met, met_style = "✗ error", "bold red"
        result.add_row(
            row.name,
            fmt(row.value),
            row.unit,
            baseline,
            "–" if ratio is None else f"{ratio:.2f}x",
            row.target or "",
            Text(met, style=met_style),
        )
    return result


def markdown(report: RunReport) -> str:
    """The table as Markdown (for the README), with each baseline named and the environment."""
    env = report.environment
    lines = [
        "| measure | value | baseline | ratio | target | met? |",
        "|---|---:|---|---:|---|:-:|",
    ]
    for row in report.rows:
        if row.error and math.isnan(row.value):
            lines.append(f"| {row.name} | error: {row.error} | | | {row.target or ''} | ✗ |")
            continue
        baseline = ""
        if row.baseline is not None:
            baseline = f"{fmt(row.baseline)} {row.unit}"
            if row.baseline_name:
                baseline += f" ({row.baseline_name})"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        met = "" if row.met is None else ("✓" if row.met else "✗")
        if row.error:
            met = f"✗ ({row.error})"
        value = f"{fmt(row.value)} {row.unit}"
        lines.append(f"| {row.name} | {value} | {baseline} | {ratio} | {row.target or ''} | {met} |")
    packages = env.get("packages", {})
    servers = env.get("servers", {})
    lines += [
        "",
        f"{'Quick' if report.quick else 'Full'} run of {env.get('date', report.started_at)}, "
        f"{report.seconds:.0f} s: {env.get('cpu_model', '?')}, {env.get('cpu_count', '?')} CPUs, "
        f"{env.get('memory_total_mb', '?')} MB, load average {_load(env.get('load_average'))}; "
        f"Python {env.get('python', '?')}, opentelemetry-sdk {packages.get('opentelemetry-sdk', '?')}, "
        f"Redis {servers.get('redis', '?')}, PostgreSQL {servers.get('postgres', '?')}; "
        f"commit {str(env.get('git_commit') or '?')[:10]}{' (dirty)' if env.get('git_dirty') else ''}.",
    ]
    return "\n".join(lines) + "\n"


def _load(values: Any) -> str:
    if not isinstance(values, list):
        return "?"
    return " / ".join(f"{v:.2f}" for v in values)


# --- files ------------------------------------------------------------------------------------------


def write_json(report: RunReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _bars(rows: list[Measurement], scale: Callable[[Measurement], float], color: str) -> list[_Bar]:
    """Each row, then its same-run baseline in gray (a baseline shared by several rows shows once)."""
    bars: list[_Bar] = []
    shown: set[tuple[str | None, float]] = set()
    for row in rows:
        factor = scale(row)
        ratio = f" ({row.ratio:.2f}x)" if row.ratio is not None else ""
        bars.append(
            _Bar(row.name, row.value * factor, f"{fmt(row.value)} {row.unit}{ratio}", _colour(row, color))
        )
        key = (row.baseline_name, row.baseline or 0.0)
        if row.baseline and key not in shown:
            shown.add(key)
            bars.append(
                _Bar(
                    f"baseline: {row.baseline_name or 'same run'}",
                    row.baseline * factor,
                    f"{fmt(row.baseline)} {row.unit}",
                    "tab:gray",
                )
            )
    return bars


def _colour(row: Measurement, color: str) -> str:
    return "tab:red" if row.met is False else color


@dataclass
class _Bar:
    label: str
    value: float
    text: str
    color: str


def _panel(axis: Any, bars: list[_Bar]) -> None:
    """Horizontal bars on a log axis, labelled with their values."""
    from matplotlib.ticker import NullFormatter

    positions = list(range(len(bars)))
    values = [b.value for b in bars]
    axis.barh(positions, values, color=[b.color for b in bars], height=0.7)
    axis.set_yticks(positions, labels=[b.label for b in bars], fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlim(min(values) / 4, max(values) * 8)
    for position, bar in zip(positions, bars, strict=True):
        axis.text(bar.value, position, f" {bar.text}", va="center", fontsize=7)


def write_chart(report: RunReport, path: Path) -> None:
    """A PNG of the headline figures: throughputs above, latencies and costs below, with baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.headline and not math.isnan(r.value) and r.value > 0]
    panels: list[tuple[str, list[_Bar], str | None]] = []
    throughput = _bars([r for r in rows if r.kind == "throughput"], lambda r: 1.0, "tab:blue")
    if throughput:
        panels.append(("Throughput (gray: same-run baseline; red: target missed)", throughput, None))
    latency = _bars(
        [r for r in rows if r.kind == "latency" and r.unit in _TO_MICROSECONDS],
        lambda r: _TO_MICROSECONDS[r.unit],
        "tab:orange",
    )
    if latency:
        panels.append(("Latency and cost (gray: same-run baseline; red: target missed)", latency, "µs"))
    heights = [len(bars) for _, bars, _ in panels] or [1]
    figure, axes = plt.subplots(
        len(heights),
        1,
        figsize=(11, 1.2 + 0.28 * sum(heights) + 0.6 * len(heights)),
        gridspec_kw={"height_ratios": heights},
        constrained_layout=True,
        squeeze=False,
    )
    if not panels:
        axes[0][0].text(0.5, 0.5, "no headline figures", ha="center", va="center")
        axes[0][0].set_axis_off()
    for (title, bars, unit), row_axes in zip(panels, axes, strict=True):
        axis = row_axes[0]
        _panel(axis, bars)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(f"{unit + ', ' if unit else ''}log scale", fontsize=8)

    env = report.environment
    mode = " --quick" if report.quick else ""
    figure.suptitle(
        f"studyin-analytics bench{mode} · {env.get('date', report.started_at)} · "
        f"{env.get('cpu_model', '?')}, {env.get('cpu_count', '?')} CPUs · "
        f"commit {str(env.get('git_commit') or '?')[:10]}",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
