"""The bench runner: loads the benchmark modules, runs the registered benchmarks, reports.

Used by ``studyin-analytics bench`` (:mod:`.commands`); tests call :func:`run` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import importlib
import importlib.util
import logging
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ..instrumentation.settings import Settings, require
from . import framework
from .framework import REGISTRY, BenchContext, Measurement, summarize_profile
from .report import BenchRun, RunReport, environment

_log = logging.getLogger(__name__)

PACKAGE = __name__.rpartition(".")[0]
QUICK_TIMEOUT_S = 120.0
FULL_TIMEOUT_S = 600.0


class _CountColumn(ProgressColumn):
    """``done/total`` (or just ``done`` while the total is unknown)."""

    def render(self, task: Task) -> Text:
        done = f"{task.completed:,.0f}"
        return Text(done if task.total is None else f"{done}/{task.total:,.0f}", style="progress.download")


class UsageError(ValueError):
    """Bad ``--only`` names (the CLI turns this into exit code 2)."""


def load_modules(modules: Iterable[str] = framework.BENCH_MODULES) -> dict[str, str]:
    """Import every benchmark module that exists; returns ``{module: error}`` for those that failed."""
    errors: dict[str, str] = {}
    for module in modules:
        name = f"{PACKAGE}.{module}"
        try:
            if importlib.util.find_spec(name) is None:
                continue
            importlib.import_module(name)
        except Exception as exc:
            _log.warning("cannot import benchmark module %s", name, exc_info=True)
            errors[module] = f"{type(exc).__name__}: {exc}"
    return errors


def select(only: Sequence[str] | None) -> list[str]:
    """The benchmarks to run, in registration order; unknown names raise :class:`UsageError`."""
    if not only:
        return list(REGISTRY)
    unknown = [name for name in only if name not in REGISTRY]
    if unknown:
        valid = ", ".join(REGISTRY) or "(none registered)"
        raise UsageError(f"unknown benchmark(s): {', '.join(unknown)}; valid names: {valid}")
    return list(dict.fromkeys(only))


def bench_settings(settings: Settings) -> Settings:
    """``settings`` with throw-away privacy and API secrets where none are configured."""
    changes: dict[str, object] = {}
    if not settings.pseudonym_keys:
        changes["pseudonym_keys"] = {"bench": secrets.token_urlsafe(32)}
        changes["pseudonym_key_id"] = "bench"
    if settings.jwt_secret is None and settings.jwt_public_key is None:
        changes["jwt_secret"] = secrets.token_urlsafe(32)
    return settings.with_overrides(**changes) if changes else settings


async def server_versions(settings: Settings) -> dict[str, str]:
    """Versions of the servers (raises when one cannot be reached, naming nothing secret)."""
    client = aioredis.Redis.from_url(require(settings.redis_url, "redis_url"), socket_connect_timeout=5)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    conn = await asyncpg.connect(require(settings.postgres_url, "postgres_url"), timeout=10)
    try:
        pg_version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return {"redis": str(info.get("redis_version")), "postgres": str(pg_version)}


async def cleanup(base: Settings, isolated: Sequence[Settings]) -> None:
    """Drop the schemas and delete the Redis keys of ``isolated`` settings."""
    if not isolated:
        return
    client = aioredis.Redis.from_url(require(base.redis_url, "redis_url"))
    try:
        for settings in isolated:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=f"{settings.stream_prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await client.delete(*batch)
                    batch.clear()
            if batch:
                await client.delete(*batch)
    finally:
        await client.aclose()
    conn = await asyncpg.connect(require(base.postgres_url, "postgres_url"))
    try:
        for settings in isolated:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.postgres_schema}" CASCADE')
    finally:
        await conn.close()


def error_row(bench: str, error: str) -> Measurement:
    return Measurement(
        name=bench, value=math.nan, unit="", error=error, met=False, bench=bench, headline=False
    )


async def _run_one(
    name: str,
    settings: Settings,
    *,
    quick: bool,
    progress: Progress,
    timeout_s: float,
    profile_dir: Path | None,
    repeats: int | None,
) -> tuple[list[Measurement], str | None, float]:
    """Run one benchmark in its own context, then clean up after it: its rows, its error, its seconds."""
    error: str | None
    ctx = BenchContext(settings=settings, quick=quick, progress=progress, profile_dir=profile_dir)
    if repeats is not None:
        ctx.repeats = repeats
    bench_started = time.monotonic()
    error = None
    rows: list[Measurement] = []
    profiler = cProfile.Profile() if profile_dir is not None else None
    try:
        if profiler is not None:
            profiler.enable()
        try:
            result = await asyncio.wait_for(REGISTRY[name](ctx), timeout_s)
        finally:
            if profiler is not None:
                profiler.disable()
        if not isinstance(result, list) or not all(isinstance(r, Measurement) for r in result):
            raise TypeError("a benchmark must return a list of Measurement rows")
        rows = result
    except TimeoutError:
        error = f"timed out after {timeout_s:.0f}s"
    except Exception as exc:
        _log.debug("benchmark %s failed", name, exc_info=True)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            await cleanup(settings, ctx.isolated)
        except Exception as exc:  # a failed cleanup is worth a row, not a crash
            error = error or f"cleanup failed: {type(exc).__name__}: {exc}"
    seconds = time.monotonic() - bench_started
    if profiler is not None and profile_dir is not None:
        _write_profiles(profiler, profile_dir, name, progress.console)
    return rows, error, seconds


async def run(
    settings: Settings,
    *,
    quick: bool,
    only: Sequence[str] | None = None,
    console: Console | None = None,
    timeout_s: float | None = None,
    import_errors: dict[str, str] | None = None,
    profile_dir: Path | None = None,
    repeats: int | None = None,
) -> RunReport:
    """Run the selected registered benchmarks (modules must already be loaded) and collect rows.

    ``settings`` must carry reachable Redis and PostgreSQL URLs.
    """
    console = console or Console(stderr=True, emoji=False)
    names = select(only)
    settings = bench_settings(settings)
    timeout = timeout_s if timeout_s is not None else (QUICK_TIMEOUT_S if quick else FULL_TIMEOUT_S)
    started = time.monotonic()
    report = RunReport(quick=quick, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    env = environment()
    env["servers"] = await server_versions(settings)
    for module, reason in (import_errors or {}).items():
        report.runs.append(BenchRun(name=f"module:{module}", seconds=0.0, error=reason))
        report.rows.append(error_row(f"module:{module}", f"import failed: {reason}"))

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        _CountColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        overall = progress.add_task("benchmarks", total=len(names))
        for name in names:
            progress.update(overall, description=f"benchmark [bold]{name}[/]")
            rows, error, seconds = await _run_one(
                name,
                settings,
                quick=quick,
                progress=progress,
                timeout_s=timeout,
                profile_dir=profile_dir,
                repeats=repeats,
            )
            for row in rows:
                row.bench = row.bench or name
            report.rows.extend(rows)
            if error is not None:
                report.rows.append(error_row(name, error))
                progress.console.print(
                    f"[red]✗ {escape(name)}[/] failed after {seconds:.1f}s: {escape(error)}", highlight=False
                )
            else:
                progress.console.print(
                    f"[green]✓ {escape(name)}[/] {len(rows)} rows in {seconds:.1f}s", highlight=False
                )
            report.runs.append(BenchRun(name=name, seconds=seconds, error=error))
            progress.advance(overall)
        progress.update(overall, description="benchmarks done")
    env["load_average_after"] = list(_loadavg())
    report.environment = env
    report.seconds = time.monotonic() - started
    return report


def _write_profiles(profiler: cProfile.Profile, directory: Path, name: str, console: Console) -> None:
    """Dump the benchmark thread's profile and summarize every new ``.prof`` file of ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(directory / f"{name}.runner.prof"))
    for path in sorted(directory.glob("*.prof")):
        if path.with_suffix(".txt").exists():
            continue
        try:
            summary = summarize_profile(path)
        except Exception as exc:  # an empty or truncated file from a killed process
            warning = f"[yellow]warning:[/] cannot read profile {escape(str(path))}: {escape(str(exc))}"
            console.print(warning, highlight=False)
        else:
            console.print(f"profile: {escape(str(summary))}", highlight=False)


def _loadavg() -> tuple[float, float, float]:
    import os

    with contextlib.suppress(OSError):
        return os.getloadavg()
    return (math.nan, math.nan, math.nan)


def write_outputs(
    report: RunReport,
    out: Path | None,
    chart: Path | None,
    console: Console,
    markdown_path: Path | None = None,
) -> bool:
    """Write the JSON, the chart and the Markdown table; returns False if the chart could not be drawn."""
    from .report import markdown, write_chart, write_json

    ok = True
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown(report), encoding="utf-8")
        console.print(f"Markdown table written to [bold]{escape(str(markdown_path))}[/]", highlight=False)
    if out is not None:
        write_json(report, out)
        console.print(f"results written to [bold]{escape(str(out))}[/]", highlight=False)
    if chart is not None:
        try:
            write_chart(report, chart)
        except ImportError:
            console.print(
                "[red]error:[/] the chart needs matplotlib: pip install 'studyin-analytics[bench]'",
                highlight=False,
            )
            ok = False
        else:
            console.print(f"chart written to [bold]{escape(str(chart))}[/]", highlight=False)
    return ok
