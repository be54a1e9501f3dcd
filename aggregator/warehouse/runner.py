"""One export step over every source and target, and the ``--follow`` loop around it.

A step takes the watermark ``hi`` once (:mod:`.watermark`), then for each source reads the
rows between each target's cursor and ``hi`` (once for targets at the same cursor, which is
the rule) and hands the same Arrow chunks to each target, which commits them with its cursor.
Targets are independent: a step killed between the Parquet commit and the Iceberg commit
leaves Parquet one step ahead, and the next step reads the Iceberg range again from its own
cursor. The exporter holds a PostgreSQL advisory lock while it runs: one writer at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from ..cli.settings import Settings
from .iceberg import IcebergTarget, Written, open_catalog
from .parquet import ParquetTarget
from .settings import ExportSettings, catalog_url, exporter_url, with_options
from .sources import Source
from .watermark import Postgres

_log = logging.getLogger(__name__)


class Target(Protocol):
    name: str

    def cursor(self, source: Source) -> int | None: ...

    def begin(self, source: Source, schema: pa.Schema, lo: int, hi: int) -> TargetStep: ...


class TargetStep(Protocol):
    def add(self, chunk: pa.Table) -> None: ...

    def commit(self) -> Written: ...

    def abort(self) -> None:
        """Forget what :meth:`add` staged (a step that failed or was interrupted commits nothing)."""


class ExporterBusy(RuntimeError):
    """Another exporter holds the lock of this schema."""


@dataclass
class Outcome:
    source: str
    target: str
    lo: int
    hi: int
    written: Written


@dataclass
class StepReport:
    hi: int
    outcomes: list[Outcome] = field(default_factory=list)
    pending: dict[str, dict[str, int]] = field(default_factory=dict)
    """Dry run: rows each target would export, by source."""

    @property
    def rows(self) -> int:
        return sum(o.written.rows for o in self.outcomes)


Progress = Callable[[str, int], None]
"""Called with (source, rows) as chunks are written."""


def prefetch(chunks: Iterator[pa.Table], depth: int = 1) -> Iterator[pa.Table]:
    """``chunks`` read ahead by a thread: PostgreSQL streams the next chunk while this one is
    written (libpq and Arrow release the GIL). At most ``depth`` chunks wait in memory."""
    import queue
    import threading

    done = object()
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        ready.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(done)
        except BaseException as exc:  # handed to the consumer
            ready.put(exc)

    reader = threading.Thread(target=read, name="export-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, pa.Table)
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


def _tee(chunks: Iterator[pa.Table], source: Source, progress: Progress | None) -> Iterator[pa.Table]:
    for chunk in chunks:
        if progress is not None:
            progress(source.table, chunk.num_rows)
        yield chunk


class Exporter:
    """Owns the PostgreSQL connection, the lock and the targets; :meth:`step` exports once."""

    def __init__(
        self,
        settings: Settings,
        export: ExportSettings,
        sources: list[Source],
        *,
        dry_run: bool = False,
        wait_for_lock: bool = False,
        where: dict[str, str] | None = None,
    ) -> None:
        self.settings, self.export, self.sources = settings, export, sources
        self.dry_run = dry_run
        self.where = where or {}
        url = with_options(exporter_url(settings, export), export.postgres_role, settings.postgres_schema)
        self.pg = Postgres(url + "%20-c%20TimeZone%3DUTC")
        try:
            if not dry_run:
                while not self.pg.try_lock():
                    if not wait_for_lock:
                        raise ExporterBusy(
                            f"another exporter is running on schema {settings.postgres_schema!r} "
                            "(it holds the export lock); with --follow this one would wait as a standby"
                        )
                    time.sleep(1.0)
            self.targets = self._targets()
        except BaseException:
            self.pg.close()
            raise

    def _targets(self) -> list[Target]:
        targets: list[Target] = []
        if "parquet" in self.export.formats:
            parquet = ParquetTarget(self.export.parquet_dir)
            if not self.dry_run:
                for source in self.sources:
                    parquet.recover(source)
            targets.append(parquet)
        if "iceberg" in self.export.formats:
            catalog = open_catalog(
                self.export.catalog_name,
                catalog_url(self.settings, self.export),
                self.export.warehouse,
                create=not self.dry_run,
            )
            targets.append(IcebergTarget(catalog, self.export.namespace))
        return targets

    def close(self) -> None:
        self.pg.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cursors(self, source: Source) -> dict[str, int]:
        return {t.name: t.cursor(source) or 0 for t in self.targets}

    def lag(self) -> dict[str, dict[str, int]]:
        """Rows (row versions) not yet exported, by source and target."""
        out: dict[str, dict[str, int]] = {}
        for source in self.sources:
            where = self.where.get(source.table, "")
            out[source.table] = {
                name: self.pg.count(source, lo, None, where) for name, lo in self.cursors(source).items()
            }
        return out

    def step(
        self, progress: Progress | None = None, totals: Callable[[str, int], None] | None = None
    ) -> StepReport:
        hi = self.pg.xmin()
        _log.info("export step up to watermark %d", hi)
        report = StepReport(hi)
        for source in self.sources:
            where = self.where.get(source.table, "")
            by_cursor: dict[int, list[Target]] = {}
            for target in self.targets:
                by_cursor.setdefault(target.cursor(source) or 0, []).append(target)
            if self.dry_run:
                report.pending[source.table] = {
                    t.name: self.pg.count(source, lo, hi, where) if lo < hi else 0
                    for lo, group in by_cursor.items()
                    for t in group
                }
                continue
            for lo, group in sorted(by_cursor.items()):
                if lo >= hi:
                    continue
                if totals is not None:
                    totals(source.table, self.pg.count(source, lo, hi, where))
                report.outcomes += self._export(source, group, lo, hi, where, progress)
        return report

    def _export(
        self, source: Source, group: list[Target], lo: int, hi: int, where: str, progress: Progress | None
    ) -> list[Outcome]:
        schema, chunks = self.pg.read(source, lo, hi, self.export.chunk_rows, where)
        # The same chunks go to every target at this cursor, in lock step: read once, memory
        # bounded by one chunk.
        steps = [target.begin(source, schema, lo, hi) for target in group]
        try:
            for chunk in _tee(prefetch(chunks), source, progress):
                for step in steps:
                    step.add(chunk)
        except BaseException:
            # A failed step leaves no staged files behind (a crash's are dropped by recover()).
            for step in steps:
                step.abort()
            raise
        outcomes = []
        for target, step in zip(group, steps, strict=True):
            written = step.commit()
            outcomes.append(Outcome(source.table, target.name, lo, hi, written))
            _log.log(
                logging.INFO if written.rows else logging.DEBUG,
                "exported %s rows of %s to %s (watermark %d..%d)",
                written.rows,
                source.table,
                target.name,
                lo,
                hi,
            )
        return outcomes
