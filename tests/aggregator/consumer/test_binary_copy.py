"""The columnar binary COPY of raw events (consumer/binary_copy.py) stores what asyncpg's per-row COPY stores.

Two oracles: a row-by-row encoder written from PostgreSQL's documented binary format (no server, many
examples), and PostgreSQL itself: the same records copied both ways into two tables of the raw columns'
types hold the same rows.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID as FastUUID
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.consumer import binary_copy
from studyin_analytics.aggregator.consumer.mapping import RAW_COLUMNS, RawRecord
from tests.support import ServerUrls

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
"""Text PostgreSQL stores (no NUL: screened out before the COPY; no lone surrogate: see below)."""
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_record = st.tuples(
    st.uuids() | st.uuids().map(lambda u: FastUUID(u.bytes)),  # the mapping's ids are asyncpg's
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    _text,
    st.none() | _text,
    st.none() | st.uuids(),
    st.dictionaries(_text, _json, max_size=4).map(lambda d: orjson.dumps(d).decode()),
)


def reference_row(record: RawRecord) -> bytes:
    """One row as PostgreSQL's binary COPY format documents it, field by field."""
    event_id, at, event_type, user, session, properties = record
    fields = [
        event_id.bytes,
        struct.pack(">q", (at - _PG_EPOCH) // _US),
        event_type.encode(),
        None if user is None else user.encode(),
        None if session is None else session.bytes,
        b"\x01" + properties.encode(),
    ]
    out = struct.pack(">h", len(fields))
    for value in fields:
        out += struct.pack(">i", -1) if value is None else struct.pack(">i", len(value)) + value
    return out


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(st.lists(_record, max_size=20), st.booleans())
def test_the_columns_encode_as_the_rows_do(records: list[RawRecord], with_times: bool) -> None:
    times = [(r[1] - _EPOCH) // _US for r in records] if with_times else None
    assert bytes(binary_copy.encode_rows(records, times)) == b"".join(map(reference_row, records))


@pytest.mark.unit
def test_text_arrow_refuses_is_reported() -> None:
    record = (uuid.uuid4(), datetime.now(UTC), "lone \ud800 surrogate", None, None, "{}")
    with pytest.raises(binary_copy.Unencodable):
        binary_copy.encode_rows([record])


_TABLE = (
    "CREATE TEMP TABLE {} (event_id uuid, occurred_at timestamptz, event_type text,"
    " user_hash text, session_id uuid, properties jsonb)"
)


async def _copied_both_ways(url: str, records: list[RawRecord]) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        await conn.reset_type_codec("jsonb", schema="pg_catalog")  # as the aggregator's connections
        await conn.execute(_TABLE.format("by_rows") + ";" + _TABLE.format("by_columns"))
        await conn.copy_records_to_table("by_rows", records=records, columns=RAW_COLUMNS)
        rows = binary_copy.encode_rows(records)
        await conn.copy_to_table(
            "by_columns", source=binary_copy.chunks(rows), columns=RAW_COLUMNS, format="binary"
        )
        differ = await conn.fetchval(
            "SELECT count(*) FROM ((TABLE by_rows EXCEPT ALL TABLE by_columns)"
            " UNION ALL (TABLE by_columns EXCEPT ALL TABLE by_rows)) d"
        )
        return differ, await conn.fetchval("SELECT count(*) FROM by_columns")
    finally:
        await conn.close()


@settings(max_examples=25, deadline=None)
@given(records=st.lists(_record, max_size=30))
def test_postgresql_stores_the_same_rows_either_way(
    server_urls: ServerUrls, records: list[RawRecord]
) -> None:
    differ, stored = asyncio.run(_copied_both_ways(server_urls.postgres_url, records))
    assert (differ, stored) == (0, len(records))
