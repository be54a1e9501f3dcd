"""The columnar batch prototype against the row path: random span records (Hypothesis strategies), and
both paths' events and rollup deltas in comparable shapes (tests/exporter/test_wire_columnar.py,
tests/aggregator/consumer/test_columnar.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from studyin_analytics.aggregator.consumer import columnar, columnar_counts, counting
from studyin_analytics.aggregator.consumer.mapping import rows_from_span
from studyin_analytics.exporter import wire, wire_columnar
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from tests.support.pipeline import PSEUDONYMIZER

INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
ANY_VALUE = st.one_of(
    TEXT,
    INT64,
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.binary(max_size=4),
    st.lists(TEXT, max_size=3).map(tuple),
    st.dictionaries(TEXT, INT64, max_size=2),
)
USERS = [PSEUDONYMIZER.pseudonymize(f"columnar-{i}") for i in range(4)]
# Odd values (a number as a learner, a number as a string) are drawn now and then, not as often as
# the common ones: most batches vectorize, some do not (the row way's answer is checked either way).
USER_VALUE = st.sampled_from([*USERS * 4, USERS[0] + "\n", "not-a-pseudonym", "", None, None, 7])
NUMBER = st.one_of(
    st.integers(-5, 50),
    st.integers(-5, 50),
    st.floats(-5, 50),
    st.sampled_from([math.inf, -math.inf, None, None, None, None, None, None, "7", True]),
)
EVENT_NAMES = [
    "studyin.material_view",
    "studyin.material_complete",
    "studyin.xp_awarded",
    "studyin.level_up",
    "studyin.achievement_unlocked",
    "studyin.streak_updated",
    "studyin.streak_broken",
    "studyin.ai_coach_interaction",
    "studyin.custom",
    "exception",
]
EVENT_ATTRIBUTES = st.dictionaries(
    st.sampled_from(
        ["studyin.xp.amount", "studyin.level", "studyin.streak.days", "studyin.streak.previous_days"]
    ),
    NUMBER,
    max_size=3,
).flatmap(
    lambda numbers: st.fixed_dictionaries(
        {},
        optional={
            "user.hash": USER_VALUE,
            "studyin.achievement.id": st.one_of(st.sampled_from(["a", "b"]), st.none()),
            "studyin.custom.schema": st.sampled_from(["com.acme.app/quiz_done", "Not Qualified", "x.y/z\n"]),
        },
    ).map(lambda extra: {**numbers, **extra})
)
SPAN_ATTRIBUTES = st.fixed_dictionaries(
    {},
    optional={
        "user.hash": USER_VALUE,
        "http.route": st.sampled_from(["/a", "/b/{id}", ""]),
        "http.request.method": st.sampled_from(["GET", "POST", ""]),
        "http.method": st.sampled_from(["GET", "PUT"]),
        "http.response.status_code": st.sampled_from([200, 404, 500, 503]),
        "http.status_code": st.sampled_from([201, 502]),
        "error.type": st.sampled_from(["RuntimeError", "500"]),
    },
)
TIMES = st.integers(1_700_000_000 * 10**9, 1_700_000_000 * 10**9 + 3 * 86_400 * 10**9)
RESOURCES = [{"service.name": "a"}, {"service.name": "b", "host.name": "h"}]


@st.composite
def any_records(draw: st.DrawFn) -> list[SpanRecord]:
    """Spans and log events of any shape the row layout carries (for the layout round trip)."""
    attributes = st.dictionaries(TEXT, ANY_VALUE, max_size=4)
    records = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()) and draw(st.booleans()):
            records.append(
                wire.log_record(
                    draw(st.binary(min_size=16, max_size=16)),
                    draw(st.none() | st.binary(min_size=16, max_size=16)),
                    draw(st.none() | st.binary(min_size=8, max_size=8)),
                    draw(TEXT),
                    draw(INT64),
                    draw(attributes),
                    draw(st.sampled_from(RESOURCES)),
                )
            )
            continue
        events = [
            EventRecord(draw(TEXT), draw(INT64), draw(attributes)) for _ in range(draw(st.integers(0, 3)))
        ]
        records.append(_span(draw, draw(attributes), events, draw(st.integers(0, 4)), INT64))
    return records


def _span(
    draw: st.DrawFn, attributes: dict[str, Any], events: list[EventRecord], kind: int, times: Any
) -> SpanRecord:
    start, end = draw(times), draw(times)
    return SpanRecord(
        draw(st.binary(min_size=16, max_size=16)),
        draw(st.binary(min_size=8, max_size=8)),
        draw(st.none() | st.binary(min_size=8, max_size=8)),
        draw(TEXT),
        kind,
        start,
        end,
        draw(st.integers(0, 2)),
        attributes,
        events,
        draw(st.sampled_from(RESOURCES)),
    )


@st.composite
def studyin_records(draw: st.DrawFn) -> list[SpanRecord]:
    """Spans with StudyIn events and HTTP server spans, with odd values now and then."""
    records = []
    for _ in range(draw(st.integers(0, 8))):
        events = [
            EventRecord(draw(st.sampled_from(EVENT_NAMES)), draw(TIMES), draw(EVENT_ATTRIBUTES))
            for _ in range(draw(st.integers(0, 4)))
        ]
        kind = draw(st.sampled_from([wire.SPAN_KIND_SERVER, wire.SPAN_KIND_INTERNAL]))
        records.append(_span(draw, draw(SPAN_ATTRIBUTES), events, kind, TIMES))
    return records


def row_events(records: Sequence[SpanRecord]) -> list[tuple[bytes, str, int, str | None]]:
    rows = [row for record in records for row in rows_from_span(record)]
    return sorted(((r.event_id.bytes, r.event_type, r.time_us, r.user_hash) for r in rows), key=repr)


def columnar_events(blob: bytes) -> list[tuple[bytes, str, int, str | None]]:
    table = columnar.events(columnar.load(blob))
    return sorted(
        (
            (r["event_id"], r["event_type"], r["time_us"], r["user"])
            for r in table.select(["event_id", "event_type", "time_us", "user"]).to_pylist()
        ),
        key=repr,
    )


def row_counts(records: Sequence[SpanRecord]) -> dict[str, dict[Any, Any]]:
    """:class:`Counts` of the records' events, restricted to what :mod:`columnar_counts` derives."""
    counts = counting.Counts()
    counts.add([row for record in records for row in rows_from_span(record)])
    c = counting
    return {
        "by_type": dict(counts.by_type),
        "daily": {
            k: [v[c.DAY_EVENTS], v[c.DAY_VIEWED], v[c.DAY_COMPLETED], v[c.DAY_XP]]
            for k, v in counts.daily.items()
        },
        "hourly": {
            k: [
                v[c.HOUR_EVENTS],
                v[c.HOUR_VIEWED],
                v[c.HOUR_COMPLETED],
                v[c.HOUR_XP],
                v[c.HOUR_AI_INTERACTIONS],
            ]
            for k, v in counts.hourly.items()
        },
        "gamification": {
            k: [
                v[c.GAME_XP],
                v[c.GAME_LEVEL],
                v[c.GAME_ACHIEVEMENTS],
                v[c.GAME_STREAK_KEY],
                v[c.GAME_CURRENT_STREAK],
                v[c.GAME_LONGEST_STREAK],
                v[c.GAME_LAST_ACTIVITY],
            ]
            for k, v in counts.gamification.items()
        },
        "system": {k: list(v) for k, v in counts.system.items()},
    }


def columnar_counts_of(blob: bytes) -> dict[str, dict[Any, Any]]:
    return columnar_counts.as_counts(columnar_counts.deltas(columnar.events(columnar.load(blob))))


def same(found: Any, expected: Any) -> bool:
    """Equal, floats within 1e-9 relative (sums added in another order)."""
    if isinstance(expected, float) or isinstance(found, float):
        return isinstance(found, int | float) and math.isclose(found, expected, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, dict):
        return (
            isinstance(found, dict)
            and found.keys() == expected.keys()
            and all(same(found[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(found, list | tuple)
            and len(found) == len(expected)
            and all(same(f, e) for f, e in zip(found, expected, strict=True))
        )
    return bool(found == expected)


def columnar_blob(records: Sequence[SpanRecord]) -> bytes:
    return wire_columnar.encode(records)
