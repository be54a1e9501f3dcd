"""The Iceberg target: one table per source, the cursor in the snapshot summary.

A step's data files are written first, then one catalog commit adds them in a single
transaction whose snapshots carry ``studyin.export.cursor`` (the step's upper watermark) in
their summary. The SQL catalog commits by compare-and-swap on the table's metadata location, so
a step is all or nothing: killed before the commit, the table and its cursor are unchanged (the
written files are orphans, never referenced); a concurrent writer makes the commit fail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from .sources import Source

CURSOR_PROPERTY = "studyin.export.cursor"
RANGE_PROPERTY = "studyin.export.range"


class ExportWriteError(RuntimeError):
    """A target refused the write: nothing was committed and the cursor is unchanged."""


@dataclass
class Written:
    rows: int = 0
    files: int = 0
    bytes: int = 0
    snapshot_id: int | None = None


def open_catalog(name: str, uri: str, warehouse: str, *, create: bool = True) -> object:
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        name, uri=uri, warehouse=_warehouse_url(warehouse), init_catalog_tables=str(create).lower()
    )


def _warehouse_url(warehouse: str) -> str:
    if "://" in warehouse:
        return warehouse
    from pathlib import Path

    return Path(warehouse).absolute().as_uri()


class IcebergTarget:
    name = "iceberg"

    def __init__(self, catalog: object, namespace: str) -> None:
        self.catalog = catalog
        self.namespace = namespace

    def identifier(self, source: Source) -> str:
        return f"{self.namespace}.{source.table}"

    def _load(self, source: Source) -> object | None:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            table: object = self.catalog.load_table(self.identifier(source))  # type: ignore[attr-defined]
            return table
        except NoSuchTableError:
            return None
        except Exception as exc:  # catalog tables not created yet (a dry run before any export)
            if "iceberg_tables" in str(exc):
                return None
            raise

    def cursor(self, source: Source) -> int | None:
        table = self._load(source)
        if table is None:
            return None
        # A table property set in the step's own transaction: it survives snapshots that a
        # compaction (Spark, Trino) commits without the exporter's summary, and snapshot expiry.
        value = table.properties.get(CURSOR_PROPERTY)  # type: ignore[attr-defined]
        if value is None:
            snapshot = table.current_snapshot()  # type: ignore[attr-defined]
            value = None if snapshot is None else snapshot.summary.additional_properties.get(CURSOR_PROPERTY)
        return int(value) if value is not None else None

    def snapshot_id(self, source: Source) -> int | None:
        table = self._load(source)
        snapshot = None if table is None else table.current_snapshot()  # type: ignore[attr-defined]
        return None if snapshot is None else int(snapshot.snapshot_id)

    def prepare(self, source: Source, schema: pa.Schema) -> object:
        """The table, created (with its partition spec) or its schema evolved to ``schema``."""
        self.catalog.create_namespace_if_not_exists(self.namespace)  # type: ignore[attr-defined]
        table = self._load(source)
        if table is None:
            table = self.catalog.create_table_if_not_exists(  # type: ignore[attr-defined]
                self.identifier(source), schema=schema
            )
            _partition(table, source)
            table = self._load(source)
        assert table is not None
        known = {f.name for f in table.schema().fields}  # type: ignore[attr-defined]
        if any(name not in known for name in schema.names):
            # New columns only: metadata, no data file is rewritten.
            with table.update_schema() as update:  # type: ignore[attr-defined]
                update.union_by_name(schema)
            table = self._load(source)
        return table

    def begin(self, source: Source, schema: pa.Schema, lo: int, hi: int) -> IcebergStep:
        try:
            table = self.prepare(source, schema)
        except OSError as exc:
            raise ExportWriteError(
                f"Iceberg table {self.identifier(source)}: cannot write metadata ({exc})"
            ) from exc
        return IcebergStep(self.identifier(source), table, lo, hi)

    def write(
        self, source: Source, schema: pa.Schema, chunks: Iterable[pa.Table], lo: int, hi: int
    ) -> Written:
        """Append ``chunks`` and move the cursor to ``hi`` in one commit (nothing when empty)."""
        step = self.begin(source, schema, lo, hi)
        for chunk in chunks:
            step.add(chunk)
        return step.commit()

    def expire_snapshots(self, source: Source, older_than_ms: int, retain_last: int = 10) -> int:
        """Expire snapshots older than ``older_than_ms`` (keeping the last ``retain_last`` and the
        current one, which holds the cursor). Returns how many were expired."""
        table = self._load(source)
        if table is None:
            return 0
        snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)  # type: ignore[attr-defined]
        keep = {s.snapshot_id for s in snapshots[-retain_last:]}
        old = [
            s.snapshot_id for s in snapshots if s.timestamp_ms < older_than_ms and s.snapshot_id not in keep
        ]
        if old:
            table.maintenance.expire_snapshots().by_ids(old).commit()  # type: ignore[attr-defined]
        return len(old)


class IcebergStep:
    """One step's appends in one transaction; :meth:`commit` publishes them with the cursor."""

    def __init__(self, identifier: str, table: object, lo: int, hi: int) -> None:
        self.identifier, self.lo, self.hi = identifier, lo, hi
        self.properties = {CURSOR_PROPERTY: str(hi), RANGE_PROPERTY: f"{lo}-{hi}"}
        self.transaction = table.transaction()  # type: ignore[attr-defined]
        self.written = Written()

    def add(self, chunk: pa.Table) -> None:
        if not chunk.num_rows:
            return
        try:
            self.transaction.append(chunk, snapshot_properties=self.properties)
        except OSError as exc:
            raise ExportWriteError(
                f"Iceberg table {self.identifier}: cannot write data files ({exc}); nothing was committed"
            ) from exc
        self.written.rows += chunk.num_rows

    def abort(self) -> None:
        """Nothing to undo: data files of an uncommitted transaction are orphans no snapshot names."""

    def commit(self) -> Written:
        from pyiceberg.exceptions import CommitFailedException

        if self.written.rows == 0:
            return self.written
        try:
            self.transaction.set_properties({CURSOR_PROPERTY: str(self.hi)})
            table = self.transaction.commit_transaction()
        except CommitFailedException as exc:
            raise ExportWriteError(f"Iceberg table {self.identifier}: commit refused ({exc})") from exc
        except OSError as exc:
            raise ExportWriteError(
                f"Iceberg table {self.identifier}: cannot write metadata ({exc}); nothing was committed"
            ) from exc
        snapshot = table.current_snapshot()
        self.written.snapshot_id = None if snapshot is None else int(snapshot.snapshot_id)
        mine = [
            s.summary.additional_properties
            for s in table.snapshots()
            if s.summary is not None
            and s.summary.additional_properties.get(RANGE_PROPERTY) == f"{self.lo}-{self.hi}"
        ]
        self.written.files = sum(int(p.get("added-data-files", 0)) for p in mine)
        self.written.bytes = sum(int(p.get("added-files-size", 0)) for p in mine)
        return self.written


def _partition(table: object, source: Source) -> None:
    from pyiceberg.transforms import DayTransform

    if source.time_column is None:
        return
    with table.update_spec() as spec:  # type: ignore[attr-defined]
        spec.add_field(source.time_column, DayTransform(), f"{source.time_column}_day")
        if source.by_event_type:
            spec.add_identity("event_type")
