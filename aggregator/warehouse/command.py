"""``studyin-analytics export``: the warehouse export command (one-shot, --follow, --status, --dry-run)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..cli.settings import Settings, load_settings
from .settings import ExportSettings

if TYPE_CHECKING:  # the writers import pyarrow, pandas and pyiceberg (~190 ms, ~60 MB): only when exporting
    from .runner import Exporter, StepReport

_log = logging.getLogger(__name__)


def _exporter(args: argparse.Namespace, *, dry_run: bool = False, wait: bool = False) -> Exporter:
    from .runner import Exporter
    from .sources import select_sources

    settings: Settings = load_settings()
    export = ExportSettings()
    if args.format:
        export = export.model_copy(update={"formats": [args.format]})
    if args.interval is not None:
        export = export.model_copy(update={"interval_s": args.interval})
    if getattr(args, "health_port", None) is not None:
        export = export.model_copy(update={"health_port": args.health_port})
    sources = select_sources(args.source, args.aggregates_only)
    where = (
        {"hourly_analytics_summary": f"active_users >= {export.min_learners}"} if args.aggregates_only else {}
    )
    return Exporter(settings, export, sources, dry_run=dry_run, wait_for_lock=wait, where=where)


def summary_table(report: StepReport) -> Table:
    table = Table(title=f"export up to watermark {report.hi}")
    for column in ("source", "target", "rows", "files", "bytes", "snapshot / manifest"):
        table.add_column(column, justify="right" if column in ("rows", "files", "bytes") else "left")
    for o in report.outcomes:
        where = str(o.written.snapshot_id) if o.target == "iceberg" else f"{o.lo:020d}-{o.hi:020d}.json"
        table.add_row(
            o.source,
            o.target,
            f"{o.written.rows:,}",
            str(o.written.files),
            f"{o.written.bytes:,}",
            where if o.written.rows else "-",
        )
    return table


def _once(args: argparse.Namespace, console: Console) -> int:
    with _exporter(args, dry_run=args.dry_run) as exporter:
        if args.dry_run:
            report = exporter.step()
            print(json.dumps({"watermark": report.hi, "would_export": report.pending}, indent=2))
            return 0
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False, disable=args.quiet) as progress:
            tasks: dict[str, Any] = {}

            def totals(source: str, rows: int) -> None:
                tasks[source] = progress.add_task(source, total=rows)

            def advance(source: str, rows: int) -> None:
                progress.advance(tasks[source], rows)

            started = time.perf_counter()
            report = exporter.step(progress=advance, totals=totals)
        if not args.quiet:
            console.print(summary_table(report))
            console.print(f"{report.rows:,} rows in {time.perf_counter() - started:.2f} s")
        if args.expire_days is not None:
            _expire(exporter, args.expire_days, console)
    return 0


def _expire(exporter: Exporter, days: float, console: Console) -> None:
    from .iceberg import IcebergTarget

    cutoff = int((time.time() - days * 86400) * 1000)
    for target in exporter.targets:
        if isinstance(target, IcebergTarget):
            for source in exporter.sources:
                expired = target.expire_snapshots(source, cutoff)
                if expired:
                    console.print(f"{source.table}: expired {expired} snapshots")


async def _follow(args: argparse.Namespace, console: Console) -> int:
    from ...exporter.runtime.health import HealthServer
    from .status import FollowState

    logging.getLogger(__package__).setLevel(min(logging.INFO, logging.getLogger().level or logging.INFO))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = FollowState()

    async def status() -> dict[str, Any]:
        return state.as_status()

    exporter = await asyncio.to_thread(_exporter, args, wait=True)
    health: HealthServer | None = None
    try:
        if exporter.export.health_port:
            health = HealthServer(status, exporter.export.health_host, exporter.export.health_port)
            await health.start()
            console.print(f"export health on http://{health.host}:{health.port}/status")
        while not stop.is_set():
            try:
                report = await asyncio.to_thread(exporter.step)
                state.record(report, await asyncio.to_thread(exporter.lag))
            except Exception as exc:  # a refused write or a lost connection: retried next step
                _log.error("export step failed: %s", exc)
                state.failed(str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=exporter.export.interval_s)
    finally:
        if health is not None:
            await health.stop()
        exporter.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    console = Console(stderr=True, emoji=False)
    if args.status:
        from .status import snapshot_status

        with _exporter(args, dry_run=True) as exporter:
            print(json.dumps(snapshot_status(exporter), indent=2))
        return 0
    if args.follow:
        return asyncio.run(_follow(args, console))
    return _once(args, console)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "export",
        help="export raw events and rollups to Iceberg tables and Parquet files (exactly once)",
        description=(
            "Export what changed since the last run, by a commit-ordered watermark, to an Apache Iceberg "
            "table per source (SQL catalog in PostgreSQL, warehouse STUDYIN_ANALYTICS_EXPORT_WAREHOUSE) and "
            "hive-partitioned Parquet files (STUDYIN_ANALYTICS_EXPORT_PARQUET_DIR). Each target commits "
            "its cursor with its data: killed anywhere, the next run neither duplicates nor skips. "
            "See docs/export.md."
        ),
    )
    p.add_argument(
        "--follow", action="store_true", help="keep exporting every --interval seconds until SIGTERM"
    )
    p.add_argument("--interval", type=float, help="seconds between steps with --follow (default 60)")
    p.add_argument("--dry-run", action="store_true", help="print what would be exported; write nothing")
    p.add_argument(
        "--status", action="store_true", help="print cursors and lag (rows not yet exported) as JSON"
    )
    p.add_argument("--format", choices=["iceberg", "parquet"], help="one target only (default: both)")
    p.add_argument("--source", action="append", help="a table to export (repeatable; default: all)")
    p.add_argument(
        "--aggregates-only",
        action="store_true",
        help="only tables without user_hash (system metrics; hours with at least k learners)",
    )
    p.add_argument(
        "--expire-days",
        type=float,
        help="after exporting, expire Iceberg snapshots older than this many days",
    )
    p.add_argument("--health-port", type=int, help="health endpoint port with --follow (0: none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary")
    p.set_defaults(func=cmd_export)
