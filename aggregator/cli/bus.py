"""The ``bus`` commands of ``studyin-analytics``: read the Redis stream bus.

* ``bus stats``: per stream length, oldest/newest entry, consumer-group pending and lag,
  dead-letter length, and the counters of every live writer (exporters, gateways);
* ``bus recent [TYPE] [-n N]``: the newest events (of one type), newest first;
* ``bus tail [TYPE]``: events as they arrive, until Ctrl-C (or ``--count``/``--seconds``);
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...instrumentation.settings import Settings, load_settings
from .console import data, new_console
from .exit_codes import EXIT_OK

_settings = load_settings


def _time(moment: datetime | None) -> str:
    return moment.isoformat(timespec="milliseconds") if moment is not None else "-"


def _client(settings: Settings) -> Any:
    from ...exporter.connection import async_client

    return async_client(settings, socket_connect_timeout=3, socket_timeout=10)


# --- bus stats ---------------------------------------------------------------------------------


async def _stats(settings: Settings, as_json: bool, console: Console) -> int:
    from ...exporter.bus import dead_letter_keys, stats
    from ...exporter.writer_stats import latency_mean

    client = _client(settings)
    try:
        result = await stats(client, settings)
    finally:
        await client.aclose()
    if as_json:
        document = {
            "redis_version": result.redis_version,
            "streams": [
                {
                    "key": s.key,
                    "length": s.length,
                    "oldest": _time(s.oldest),
                    "newest": _time(s.newest),
                    "groups": [g.__dict__ for g in s.groups],
                }
                for s in result.streams
            ],
            "dead_letter_length": result.dead_letter_length,
            "writers": result.writers,
            "totals": result.totals,
        }
        console.print_json(json.dumps(document))
        return EXIT_OK
    table = Table(title=data(f"bus {settings.stream_prefix} (Redis {result.redis_version})"))
    for column in ("stream", "entries", "oldest", "newest", "group", "consumers", "pending", "lag"):
        table.add_column(
            column, justify="right" if column in ("entries", "consumers", "pending", "lag") else "left"
        )
    for s in result.streams:
        if not s.groups:
            table.add_row(data(s.key), str(s.length), _time(s.oldest), _time(s.newest), "-", "-", "-", "-")
        for g in s.groups:
            lag = str(g.lag) if g.lag_exact else (f"≥{g.lag}" if g.lag_at_least else f"~{g.lag}")
            table.add_row(
                data(s.key),
                str(s.length),
                _time(s.oldest),
                _time(s.newest),
                data(g.name),
                str(g.consumers),
                str(g.pending),
                lag,
            )
    console.print(table)
    dead_letters = dead_letter_keys(settings)
    where = dead_letters[0] if len(dead_letters) == 1 else f"{len(dead_letters)} per-shard streams"
    console.print(data(f"dead-letter entries ({where}): {result.dead_letter_length}"))
    writers = Table(title="writers (live processes; counters since each started)")
    for column in (
        "writer",
        "spans",
        "batches",
        "retries",
        "spooled",
        "dropped",
        "spool",
        "latency ms mean/max",
    ):
        writers.add_column(column, justify="left" if column == "writer" else "right")
    now = time.time()
    for name, values in sorted(result.writers.items()):
        mean = latency_mean(values)
        age = now - float(values.get("updated_at", now) or now)
        writers.add_row(
            data(f"{name} ({age:.0f}s ago)"),
            data(values.get("spans_exported", "0")),
            data(values.get("batches_exported", "0")),
            data(values.get("retries", "0")),
            data(values.get("spans_spooled", "0")),
            data(values.get("spans_dropped", "0")),
            data(f"{values.get('spool_batches', '0')} batches"),
            f"{mean:.2f} / {float(values.get('export_latency_ms_max', 0) or 0):.2f}",
        )
    console.print(writers)
    return EXIT_OK


def cmd_bus_stats(args: argparse.Namespace) -> int:
    return asyncio.run(_stats(_settings(), args.json, new_console()))


# --- bus recent / tail ---------------------------------------------------------------------------


def _event_row(event: Any) -> list[Text]:
    attributes = ", ".join(f"{k}={v}" for k, v in sorted(event.attributes.items()))
    return [
        data(field)
        for field in (_time(event.time), event.event_type, event.user_hash or "-", attributes, event.entry_id)
    ]


def _events_table(title: str) -> Table:
    table = Table(title=data(title))
    for column in ("time", "type", "user.hash", "attributes", "entry"):
        table.add_column(column)
    return table


async def _recent(
    settings: Settings, event_type: str | None, n: int, max_entries: int, console: Console
) -> int:
    from ...exporter.bus import recent

    client = _client(settings)
    try:
        events = await recent(client, settings, event_type, n, max_entries=max_entries)
    finally:
        await client.aclose()
    table = _events_table(f"{len(events)} most recent {event_type or 'events'}")
    for event in events:
        table.add_row(*_event_row(event))
    console.print(table)
    return EXIT_OK


def cmd_bus_recent(args: argparse.Namespace) -> int:
    return asyncio.run(_recent(_settings(), args.type, args.n, args.max_entries, new_console()))


async def _tail(
    settings: Settings, event_type: str | None, count: int | None, seconds: float | None, console: Console
) -> int:
    from ...exporter.bus import tail

    client = _client(settings)
    seen = 0

    async def follow() -> None:
        nonlocal seen
        async for event in tail(client, settings, event_type=event_type, block_ms=500):
            console.print(Text("  ").join(_event_row(event)), highlight=False, soft_wrap=True)
            seen += 1
            if count is not None and seen >= count:
                return

    try:
        if seconds is None:
            await follow()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(follow(), timeout=seconds)
    finally:
        await client.aclose()
    return EXIT_OK


def cmd_bus_tail(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_tail(_settings(), args.type, args.count, args.seconds, new_console()))
    except KeyboardInterrupt:
        return EXIT_OK


# --- parser ----------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bus`` command and its subcommands to the ``studyin-analytics`` parser."""
    bus = subparsers.add_parser(
        "bus",
        help="inspect the Redis stream bus (stats, recent events, live tail)",
        description="Read the Redis stream bus of STUDYIN_ANALYTICS_REDIS_URL / _STREAM_PREFIX.",
    )
    sub = bus.add_subparsers(dest="bus_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser(
        "stats",
        help="length, oldest/newest, consumer-group lag and pending, writer counters",
        description=(
            "Per stream: entries, oldest and newest entry time, and per consumer group the consumers, "
            "pending (delivered, not acknowledged) and lag (not yet delivered: 0 once the group has "
            "read the newest entry, else counted server side, '≥N' past 100000, '~N' Redis's own count "
            "past 1000). Then the dead-letter length and the counters of every live writer "
            "(spans, batches, retries, spooled, dropped, export latency)."
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_bus_stats)

    p = sub.add_parser(
        "recent",
        help="the newest events, optionally of one type",
        description=(
            "Scan back from the newest entries and print the N newest events of TYPE (e.g. material_view, "
            "xp_awarded, api_request), newest first."
        ),
    )
    p.add_argument("type", nargs="?", help="event type (default: all)")
    p.add_argument("-n", type=int, default=20, help="how many events (default 20)")
    p.add_argument(
        "--max-entries", type=int, default=10_000, help="entries scanned per stream at most (default 10000)"
    )
    p.set_defaults(func=cmd_bus_recent)

    p = sub.add_parser(
        "tail",
        help="print events as they arrive",
        description="Follow the bus and print each new event (of TYPE) until Ctrl-C, --count or --seconds.",
    )
    p.add_argument("type", nargs="?", help="event type (default: all)")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.set_defaults(func=cmd_bus_tail)
