"""The commit-ordered watermark and the PostgreSQL side of the export (ADBC: rows as Arrow).

A step reads ``hi = pg_snapshot_xmin(pg_current_snapshot())``: every transaction below it has
ended, so every row whose watermark (``stored_xid``/``changed_xid``, the id of the transaction
that wrote it) is below ``hi`` is committed and visible, and no transaction still running can
ever write a row below it. Rows in ``[lo, hi)``, ``lo`` the previous step's ``hi``, are thus
exactly the rows (row versions, for rollups) that appeared between the two steps, whatever order
the aggregator's rounds committed in. A rollup row changed again later moves above ``hi`` and is
read by a later step as its new version; a raw row never changes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from ..storage.variant import LEARNERLESS_TABLE
from .sources import Source, count_query, range_query

EXPORT_LOCK_CLASS = 0x5345_5850
"""Session advisory lock ``(EXPORT_LOCK_CLASS, hashtext(schema))`` held by the running exporter:
one writer per analytics schema."""


def _plain(schema: pa.Schema) -> pa.Schema:
    """The driver's per-field metadata (``POSTGRESQL:type``) removed: it is not part of the data."""
    return pa.schema([pa.field(f.name, f.type, nullable=True) for f in schema])


def _table(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """The batches as one table under ``schema`` (same types, no metadata): zero copy."""
    return pa.Table.from_arrays(pa.Table.from_batches(batches).columns, schema=schema)


class Postgres:
    """One ADBC connection (autocommit) as the exporter's role, search path = analytics schema."""

    def __init__(self, url: str) -> None:
        from adbc_driver_postgresql import dbapi

        self._conn = dbapi.connect(url, autocommit=True)
        self._learnerless: frozenset[str] | None = None
        self._looked_for_learnerless = False

    def close(self) -> None:
        self._conn.close()

    def scalar(self, sql: str) -> object:
        with self._conn.cursor() as cursor:
            cursor.execute(sql)
            row = cursor.fetchone()
        return None if row is None else row[0]

    def xmin(self) -> int:
        """``pg_snapshot_xmin`` of a snapshot taken now: the upper bound of this step."""
        return int(str(self.scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")))

    def try_lock(self) -> bool:
        return bool(
            self.scalar(f"SELECT pg_try_advisory_lock({EXPORT_LOCK_CLASS}, hashtext(current_schema()))")
        )

    def columns(self, table: str) -> list[tuple[str, str]]:
        sql = (
            "SELECT column_name, udt_name FROM information_schema.columns "
            f"WHERE table_schema = current_schema() AND table_name = '{table}' ORDER BY ordinal_position"
        )
        with self._conn.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetchall()
        if not rows:
            raise LookupError(
                f"table {table!r} not found in the analytics schema (run `studyin-analytics migrate`)"
            )
        return [(str(r[0]), str(r[1])) for r in rows]

    def learnerless(self) -> frozenset[str] | None:
        """Columns of the citus variant's learner-less raw table (``None``: the plain variant)."""
        if not self._looked_for_learnerless:
            if self.scalar(f"SELECT to_regclass('{LEARNERLESS_TABLE}')::text") is not None:
                self._learnerless = frozenset(name for name, _ in self.columns(LEARNERLESS_TABLE))
            self._looked_for_learnerless = True
        return self._learnerless

    def count(self, source: Source, lo: int, hi: int | None = None, where: str = "") -> int:
        learnerless = self.learnerless() if source.is_raw else None
        columns = self.columns(source.table) if learnerless is not None else None
        return int(str(self.scalar(count_query(source, lo, hi, where, columns, learnerless))))

    def read(
        self, source: Source, lo: int, hi: int, chunk_rows: int, where: str = ""
    ) -> tuple[pa.Schema, Iterator[pa.Table]]:
        """The rows of ``[lo, hi)`` as Arrow tables of about ``chunk_rows`` rows (streamed)."""
        sql = range_query(source, self.columns(source.table), lo, hi, where, self.learnerless())
        cursor = self._conn.cursor()
        cursor.execute(sql)
        reader = cursor.fetch_record_batch()
        schema = _plain(reader.schema)

        def chunks() -> Iterator[pa.Table]:
            try:
                pending: list[pa.RecordBatch] = []
                size = 0
                for batch in reader:
                    pending.append(batch)
                    size += batch.num_rows
                    if size >= chunk_rows:
                        yield _table(pending, schema)
                        pending, size = [], 0
                if pending:
                    yield _table(pending, schema)
            finally:
                cursor.close()

        return schema, chunks()
