"""The ``schemas`` and ``failed-events`` commands of ``studyin-analytics`` (docs/custom-events.md).

* ``schemas register NAME VERSION FILE``: register a JSON Schema (refused with every reason when it leaves
  the subset or breaks its SchemaVer level), then publish the registry to applications through Redis;
* ``schemas list``, ``schemas show NAME``: the registry and one type's full history;
* ``schemas deprecate NAME [--version V]``, ``schemas publish``;
* ``failed-events list [--type T] [--since T]``: refused custom events with each error's pointer and reason;
* ``failed-events replay [--type T] [--since T]``: store those the registry accepts now, exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from typing import Any

from .console import data, new_console
from .exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from .settings import Settings, load_settings

_settings = load_settings


def _redis(settings: Settings) -> Any:
    from ...exporter.connection import sync_client

    return sync_client(settings, socket_connect_timeout=3, socket_timeout=10)


async def _with_conn(settings: Settings, work: Any, service: Any = "admin") -> Any:
    from ..storage.db import connect

    conn = await connect(settings, service)
    try:
        return await work(conn)
    finally:
        await conn.close()


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        example = "2026-12-03T10:00:00+00:00"
        raise ValueError(f"--since: not an ISO 8601 time: {text!r} (e.g. {example})") from None
    if moment.tzinfo is None:
        raise ValueError("--since needs a time zone (e.g. 2026-12-03T10:00:00+00:00)")
    return moment


def cmd_schemas(args: argparse.Namespace) -> int:
    from ...instrumentation.custom_schemas import SchemaRefused
    from ..custom import registry

    settings = _settings()
    console = new_console()
    schema: Any = None
    if args.action == "register":
        try:
            with open(args.file, encoding="utf-8") as handle:
                schema = json.load(handle)
        except (OSError, ValueError) as exc:
            new_console(stderr=True).print(data(f"error: cannot read {args.file}: {exc}"))
            return EXIT_USAGE

    async def run(conn: Any) -> int:
        if args.action == "register":
            try:
                row = await registry.register(conn, args.name, args.version, schema, args.by)
            except SchemaRefused as exc:
                for pointer, reason in exc.reasons:
                    new_console(stderr=True).print(data(f"refused: {pointer or '/'}: {reason}"))
                return EXIT_FAILURE
            version = await registry.publish(conn, _redis(settings), settings.stream_prefix)
            console.print(data(f"registered {row.name} {row.version} ({row.level}); snapshot v{version}"))
        elif args.action == "list":
            rows = [v.summary() for v in await registry.all_versions(conn)]
            print(json.dumps(rows, indent=2))
        elif args.action == "show":
            rows = [
                {**v.summary(), "schema": v.schema}
                for v in await registry.history(conn, args.name)
                if args.version is None or v.version == args.version
            ]
            if not rows:
                new_console(stderr=True).print(data(f"error: no schema {args.name} {args.version or ''}"))
                return EXIT_FAILURE
            print(json.dumps(rows, indent=2))
        elif args.action == "deprecate":
            changed = await registry.deprecate(conn, args.name, args.version)
            await registry.publish(conn, _redis(settings), settings.stream_prefix)
            console.print(data(f"deprecated {changed} version(s) of {args.name}"))
        else:  # publish
            version = await registry.publish(conn, _redis(settings), settings.stream_prefix)
            console.print(data(f"published the registry: snapshot v{version}"))
        return EXIT_OK

    return int(asyncio.run(_with_conn(settings, run)))


def cmd_failed_events(args: argparse.Namespace) -> int:
    from ...exporter.connection import async_client
    from ..custom.replay import dumps, failed_entries, listing, replay

    settings = _settings()
    try:
        since = _since(args.since)
    except ValueError as exc:
        new_console(stderr=True).print(data(f"error: {exc}"))
        return EXIT_USAGE

    async def run() -> int:
        client = async_client(settings, socket_connect_timeout=3, socket_timeout=10)
        try:
            if args.action == "list":
                rows = []
                async for entry_id, event in failed_entries(
                    client, settings, event_type=args.type, since=since
                ):
                    rows.append(listing(event, entry_id))
                    if len(rows) >= args.limit:
                        break
                print(dumps(rows))
                return EXIT_OK

            async def work(conn: Any) -> Any:
                return await replay(conn, client, settings, event_type=args.type, since=since)

            # As the aggregator: replay does what it does (insert raw events, roll them up), no more.
            result = await _with_conn(settings, work, "aggregator")
            print(dumps(result.as_dict()))
            return EXIT_OK
        finally:
            await client.aclose()

    return asyncio.run(run())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``schemas`` and ``failed-events`` commands."""
    p = subparsers.add_parser(
        "schemas",
        help="register, list, show, deprecate and publish custom event schemas",
        description=(
            "The custom event registry (docs/custom-events.md): JSON Schemas (draft 2020-12, a flat subset) "
            "under vendor-qualified names and SchemaVer versions, stored in PostgreSQL with their history "
            "and published to applications through Redis."
        ),
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = actions.add_parser("register", help="register a schema version (refused with every reason)")
    r.add_argument("name", help="vendor-qualified name, e.g. org.example/case_completed")
    r.add_argument("version", help="SchemaVer MODEL-REVISION-ADDITION, e.g. 1-0-0")
    r.add_argument("file", help="the JSON Schema file")
    r.add_argument("--by", default="cli", help="who registers (recorded in the history; default cli)")
    actions.add_parser("list", help="every registered version (JSON)")
    s = actions.add_parser("show", help="one type's history with its schemas (JSON)")
    s.add_argument("name", help="vendor-qualified name, e.g. org.example/case_completed")
    s.add_argument("--version", help="only this version (default: every version)")
    d = actions.add_parser("deprecate", help="mark a type (or one version) deprecated; events still validate")
    d.add_argument("name", help="vendor-qualified name, e.g. org.example/case_completed")
    d.add_argument("--version", help="only this version (default: every version of the type)")
    actions.add_parser("publish", help="publish the registry to applications again")
    p.set_defaults(func=cmd_schemas)

    p = subparsers.add_parser(
        "failed-events",
        help="list or replay custom events that failed validation",
        description=(
            "Custom events refused by the track endpoint, the OTLP gateway or the aggregator wait on the "
            "failed-events stream with each error's JSON pointer and reason. replay re-validates them "
            "against the registry as it is now and stores those that pass, exactly once."
        ),
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("list", "failed events, oldest first (JSON)"),
        ("replay", "replay those that pass now"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("--type", help="only this schema (vendor-qualified name)")
        a.add_argument("--since", help="only events that failed at or after this ISO time (with zone)")
        if name == "list":
            a.add_argument("-n", "--limit", type=int, default=100, help="at most this many (default 100)")
    p.set_defaults(func=cmd_failed_events)
