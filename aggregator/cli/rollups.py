"""The ``rollups`` command: ``rollups rebuild --from DATE [--table NAME]`` (see ``consumer/rebuild.py``)."""

from __future__ import annotations

import argparse
import asyncio
from datetime import date

from .console import data, new_console
from .exit_codes import EXIT_OK
from .settings import load_settings


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_rebuild(args: argparse.Namespace) -> int:
    from ..consumer.rebuild import rebuild

    settings = load_settings()
    console = new_console(stderr=True)
    report = asyncio.run(rebuild(settings, args.from_day, args.table))
    if report.first_day is None or report.last_day is None:
        console.print(data(f"nothing to rebuild from {args.from_day}"))
        return EXIT_OK
    resumed = " (resumed an interrupted rebuild)" if report.resumed else ""
    console.print(
        data(
            f"rebuilt {', '.join(report.tables)} for {report.first_day} .. {report.last_day}{resumed}: "
            f"{report.days} days, {report.events} raw events, {report.rows} rows in {report.seconds:.1f} s "
            f"({report.events_per_s:,.0f} events/s); live merges waited at most {report.longest_lock_s:.2f} s"
        )
    )
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``rollups`` command to the ``studyin-analytics`` parser."""
    from ..consumer.rebuild_tables import NOT_REBUILDABLE, REBUILDS

    p = subparsers.add_parser(
        "rollups",
        help="rebuild rollups from raw events",
        description="Maintenance of the rollup tables (see docs/aggregator.md, 'Rebuilding rollups').",
    )
    sub = p.add_subparsers(dest="rollups_command", required=True, metavar="SUBCOMMAND")
    r = sub.add_parser(
        "rebuild",
        help="recompute rollups from raw events, while the aggregator keeps running",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Recompute rollup tables from the raw events of each UTC day from --from to the last day "
            "with raw events (at least today), one day at a time, while aggregators keep running.\n\n"
            "Handover: every aggregator transaction takes a shared advisory lock before it merges rollup "
            "deltas. A day is read and counted without a lock first; then, holding the lock exclusively, "
            "the rebuild adds the day's events committed since that read, replaces the day's rows and "
            "commits. It sees each event either with its deltas merged or not stored yet, and the merges "
            "that waited add to the rebuilt rows: no event is counted twice or missed. Aggregators keep "
            "reading and copying raw events; their merges wait only for a day's locked step.\n\n"
            "Resumable: each day commits with its progress (table rollup_rebuilds); killed, run the same "
            "command again to resume after the last committed day. Running a completed rebuild again "
            "gives the same rows.\n\n"
            f"Rebuildable: {', '.join(REBUILDS)}. Not rebuildable (kept right by the aggregators' "
            f"exactly-once merges alone): "
            + "; ".join(f"{name} ({why})" for name, why in NOT_REBUILDABLE.items())
            + ".\n\nRuns as STUDYIN_ANALYTICS_POSTGRES_REBUILD_ROLE (created by `migrate`; the login "
            "user of STUDYIN_ANALYTICS_POSTGRES_URL must be a member). Exit 2 if --from is before raw "
            "retention or a table is not rebuildable (nothing changed); exit 1 if it stops midway (the lock "
            "not free, PostgreSQL gone): the days committed stay, run it again to resume."
        ),
    )
    r.add_argument(
        "--from",
        dest="from_day",
        type=_day,
        required=True,
        metavar="DATE",
        help="first UTC day to rebuild (YYYY-MM-DD); not before the oldest raw events",
    )
    r.add_argument(
        "--table",
        action="append",
        metavar="NAME",
        help="rebuild only this table (repeatable; default: every rebuildable table)",
    )
    r.set_defaults(func=cmd_rebuild, default_log_level="INFO")
