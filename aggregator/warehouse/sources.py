"""What is exported: the raw events table and every rollup table, each with its watermark column.

A source's columns are read from the catalog at each step, so a column added to a table (a
custom event's field, a rollup change) is exported from then on and evolves the Iceberg schema.
Types that engines disagree on are exported as text: ``uuid`` as its canonical form, ``jsonb``
and ``json`` as JSON text. Everything else keeps its type (``timestamptz`` as UTC microseconds,
``date``, integers, ``double precision``, ``text[]`` as a list of strings).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..storage.variant import LEARNERLESS_TABLE

RAW = "analytics_events"


@dataclass(frozen=True)
class Source:
    """One table to export.

    ``xid_column``: the commit-ordered watermark (``stored_xid`` for raw events, ``changed_xid``
    for rollups, revisions 0008 and 0009_export). ``time_column``: partitions the exported table
    by UTC day (``None``: unpartitioned). ``key``: the primary key; a rollup row exported again
    after it changed is a new version of the same key, the newest has the greatest ``changed_xid``.
    """

    table: str
    xid_column: str
    key: tuple[str, ...]
    time_column: str | None
    per_user: bool = True
    by_event_type: bool = False

    @property
    def is_raw(self) -> bool:
        return self.table == RAW


SOURCES: tuple[Source, ...] = (
    Source(RAW, "stored_xid", ("event_id", "occurred_at"), "occurred_at", by_event_type=True),
    Source("learning_sessions", "changed_xid", ("user_hash", "session_id"), "started_at"),
    Source("daily_activity_summary", "changed_xid", ("user_hash", "day"), "day"),
    Source("gamification_stats", "changed_xid", ("user_hash",), None),
    Source("user_activity_hourly", "changed_xid", ("user_hash", "hour"), "hour"),
    Source("ai_coach_metrics", "changed_xid", ("user_hash", "day"), "day"),
    Source("system_metrics", "changed_xid", ("minute", "route", "method"), "minute", per_user=False),
    Source("hourly_analytics_summary", "changed_xid", ("hour",), "hour", per_user=False),
)
"""Every exported table. ``per_user=False``: no ``user_hash`` (exported with ``--aggregates-only``)."""

AS_TEXT = {"uuid", "jsonb", "json"}


def select_list(columns: list[tuple[str, str]]) -> str:
    """Columns ``(name, udt_name)`` as the exporter selects them (text for uuid and JSON)."""
    out = []
    for name, udt in columns:
        quoted = '"' + name.replace('"', '""') + '"'
        out.append(f"{quoted}::text AS {quoted}" if udt in AS_TEXT else quoted)
    return ", ".join(out)


def relation(
    source: Source, columns: list[tuple[str, str]], learnerless: frozenset[str] | None = None
) -> str:
    """What ``source`` is read from. ``learnerless``: the columns of ``analytics_system_events``, the
    citus schema variant's raw events without a learner (``aggregator/storage/variant.py``), read
    with ``analytics_events`` as one table (a column only the latter has is ``NULL`` for them)."""
    if learnerless is None or not source.is_raw:
        return source.table
    names = [_quoted(name) for name, _ in columns]
    other = [
        q if name in learnerless else f"NULL AS {q}" for (name, _), q in zip(columns, names, strict=True)
    ]
    return (
        f"(SELECT {', '.join(names)} FROM {RAW} "
        f"UNION ALL SELECT {', '.join(other)} FROM {LEARNERLESS_TABLE}) AS {RAW}"
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def range_query(
    source: Source,
    columns: list[tuple[str, str]],
    lo: int,
    hi: int,
    where: str = "",
    learnerless: frozenset[str] | None = None,
) -> str:
    """Rows of ``source`` whose watermark is in ``[lo, hi)``: exactly what changed between two steps."""
    if not (isinstance(lo, int) and isinstance(hi, int)):
        raise TypeError("watermarks are integers")
    extra = f" AND ({where})" if where else ""
    return (
        f"SELECT {select_list(columns)} FROM {relation(source, columns, learnerless)} "
        f"WHERE {source.xid_column} >= {lo} AND {source.xid_column} < {hi}{extra}"
    )


def count_query(
    source: Source,
    lo: int,
    hi: int | None = None,
    where: str = "",
    columns: list[tuple[str, str]] | None = None,
    learnerless: frozenset[str] | None = None,
) -> str:
    upper = f" AND {source.xid_column} < {int(hi)}" if hi is not None else ""
    extra = f" AND ({where})" if where else ""
    lower = f"{source.xid_column} >= {int(lo)}"
    table = source.table if columns is None else relation(source, columns, learnerless)
    return f"SELECT count(*) FROM {table} WHERE {lower}{upper}{extra}"


def select_sources(names: list[str] | None, aggregates_only: bool) -> list[Source]:
    """The sources named (all by default); ``aggregates_only`` keeps those without ``user_hash``."""
    known = {s.table: s for s in SOURCES}
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"--source: unknown table {unknown[0]!r} (known: {', '.join(known)})")
        chosen = [known[n] for n in names]
    else:
        chosen = list(SOURCES)
    if aggregates_only:
        chosen = [s for s in chosen if not s.per_user]
    return chosen
