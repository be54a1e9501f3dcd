"""The columnar batch prototype (issue 25) against the aggregator's row path: CPU per event.

The aggregator bench's workload (sessions of 7 events and API spans, 1:3; 5,000 learners), cut into
batches of 100, 1,000 and 10,000 spans, each batch encoded both ways before the clock starts:

* **row path** (baseline): what the aggregator does today with an entry, up to the rollup deltas:
  ``wire.decode_batch``, ``rows_from_span`` per span, ``Counts.add`` (every rollup of ``Counts``);
* **columnar path** (value, and once more with the exporter's 512-span entries counted per read of
  20 entries, as the aggregator's reads hold several entries): ``columnar.load`` (one msgpack call
  and array views), ``columnar.events`` (event types per distinct name, learners validated by one
  regex kernel, event ids) and ``columnar_counts.deltas`` (group-bys: daily, hourly, gamification,
  system minute rows, events per type and hour; results left as Arrow tables).

Process CPU (``time.process_time``) per event, under ``tuned_gc()``, the two paths alternating in each
repeat; median of the repeats. Also: the event ids of a batch three ways (``columnar_ids``), the
exporter-side encode per span of both layouts, and the RSS PyArrow's compute module adds on import.
Not on the aggregator's path: docs/aggregator.md ("A columnar batch, measured"). No targets: the
figures feed the projection there. ``headline=False`` for all rows.
"""

from __future__ import annotations

import functools
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pyarrow as pa

from ..aggregator.consumer import columnar, columnar_counts, columnar_ids
from ..aggregator.consumer.counting import Counts
from ..aggregator.consumer.mapping import rows_from_span
from ..aggregator.consumer.service import tuned_gc
from ..exporter import wire, wire_columnar
from ..exporter.wire import SpanRecord
from .aggregator import make_spans, users_of
from .framework import BenchContext, Measurement, bench, median

BATCH_SPANS = (100, 1_000, 10_000)
EXPORT_BATCH = 512
"""The exporter's default batch (spans per entry)."""
ENTRIES_PER_READ = 20


def _row_path(blobs: Sequence[bytes]) -> int:
    events = 0
    for blob in blobs:
        rows = [row for record in wire.decode_batch(blob) for row in rows_from_span(record)]
        Counts().add(rows)
        events += len(rows)
    return events


def _columnar_path(blobs: Sequence[bytes], stages: list[float] | None = None) -> int:
    events = 0
    for blob in blobs:
        t0 = time.process_time()
        columns = columnar.load(blob)
        t1 = time.process_time()
        table = columnar.events(columns)
        t2 = time.process_time()
        columnar_counts.deltas(table)
        t3 = time.process_time()
        if stages is not None:
            stages[0] += t1 - t0
            stages[1] += t2 - t1
            stages[2] += t3 - t2
        events += table.num_rows
    return events


def _columnar_reads(blobs: Sequence[bytes], per_read: int) -> int:
    """Events per entry, group-bys once per read of ``per_read`` entries (as a read of the aggregator
    holds several exporter batches: the group-bys' fixed cost spread over all of them)."""
    events = 0
    for i in range(0, len(blobs), per_read):
        tables = [columnar.events(columnar.load(blob)) for blob in blobs[i : i + per_read]]
        table = pa.concat_tables(tables).combine_chunks()  # one chunk: the group-bys run ~1.5x faster
        columnar_counts.deltas(table)
        events += table.num_rows
    return events


def _read_row(ctx: BenchContext, spans: Sequence[SpanRecord]) -> Measurement:
    batches = _batches(spans, EXPORT_BATCH)
    row_blobs = [wire.encode(batch) for batch in batches]
    columnar_blobs = [wire_columnar.encode(batch) for batch in batches]
    by_rows, by_columns, events = _alternate(
        ctx, lambda: _row_path(row_blobs), lambda: _columnar_reads(columnar_blobs, ENTRIES_PER_READ)
    )
    return Measurement(
        f"columnar decode+map+count, entries of {EXPORT_BATCH} spans, group-bys per read of "
        f"{ENTRIES_PER_READ} entries (CPU per event)",
        median(by_columns),
        "us/event",
        baseline=median(by_rows),
        baseline_name="row path: wire.decode_batch + rows_from_span + Counts.add, same entries",
        notes=f"{events:,} events in {len(batches)} entries; load and events per entry, deltas per read",
        samples=by_columns,
        headline=False,
    )


def _alternate(
    ctx: BenchContext, by_row: Callable[[], int], by_column: Callable[[], int], units: int | None = None
) -> tuple[list[float], list[float], int]:
    """CPU µs per unit of the row path and the columnar path, alternated over the repeats. ``units``:
    the divisor (``None``: the events each call reports, which must agree), returned with the samples."""
    rows: list[float] = []
    columns: list[float] = []
    count = units or 0
    for _ in range(ctx.repeat_count):
        seconds, found = _cpu(by_row)
        count = units or found
        rows.append(seconds / count * 1e6)
        seconds, found = _cpu(by_column)
        if units is None and found != count:
            raise RuntimeError(f"the columnar path found {found} events, the row path {count}")
        columns.append(seconds / count * 1e6)
    return rows, columns, count


def _cpu(function: Callable[[], int]) -> tuple[float, int]:
    """Process CPU seconds of ``function()`` and what it returned."""
    with tuned_gc():
        started = time.process_time()
        result = function()
        return time.process_time() - started, result


def _batches(spans: Sequence[SpanRecord], size: int) -> list[list[SpanRecord]]:
    return [list(spans[i : i + size]) for i in range(0, len(spans), size)]


def _decode_rows(ctx: BenchContext, spans: Sequence[SpanRecord], size: int) -> Measurement:
    batches = _batches(spans, size)
    row_blobs = [wire.encode(batch) for batch in batches]
    columnar_blobs = [wire_columnar.encode(batch) for batch in batches]
    _columnar_path(columnar_blobs[:1])  # PyArrow loads its kernels on first use
    stages = [0.0, 0.0, 0.0]
    by_rows, by_columns, events = _alternate(
        ctx, lambda: _row_path(row_blobs), lambda: _columnar_path(columnar_blobs, stages)
    )
    shares = ", ".join(
        f"{name} {total / ctx.repeat_count / events * 1e6:.2f}"
        for name, total in zip(("load", "events+ids", "group-bys"), stages, strict=True)
    )
    row_bytes = sum(len(b) for b in row_blobs) / len(spans)
    col_bytes = sum(len(b) for b in columnar_blobs) / len(spans)
    return Measurement(
        f"columnar decode+map+count, batches of {size:,} spans (CPU per event)",
        median(by_columns),
        "us/event",
        baseline=median(by_rows),
        baseline_name="row path: wire.decode_batch + rows_from_span + Counts.add, same batches",
        notes=f"{events:,} events in {len(batches)} batches; columnar stages (us/event): {shares}; "
        f"bytes per span: columnar {col_bytes:.0f}, rows {row_bytes:.0f}; the columnar group-bys cover "
        "daily, hourly, gamification, system minute rows and events per type (not sessions, AI coach)",
        samples=by_columns,
        headline=False,
    )


def _all_ids(function: Callable[[Any], bytes], keys: Sequence[Any]) -> int:
    return sum(len(function(k)) for k in keys)


def _id_rows(ctx: BenchContext, spans: Sequence[SpanRecord], size: int) -> list[Measurement]:
    columns = [columnar.load(wire_columnar.encode(batch)) for batch in _batches(spans, size)]
    keys = [
        columnar_ids.hash_inputs(c.trace_ids[c.event_span], c.span_ids[c.event_span], c.event_index)
        for c in columns
    ]
    count = sum(len(k) for k in keys)
    samples: dict[str, list[float]] = {"loop": [], "mapped": [], "numpy": []}
    functions: dict[str, Callable[[Any], bytes]] = {
        "loop": columnar_ids.ids_loop,
        "mapped": columnar_ids.ids_mapped,
        "numpy": columnar_ids.ids_numpy,
    }
    for _ in range(ctx.repeat_count):
        for name, function in functions.items():
            seconds, _ = _cpu(functools.partial(_all_ids, function, keys))
            samples[name].append(seconds / count * 1e6)
    loop = median(samples["loop"])
    return [
        Measurement(
            f"event ids per batch of {size:,} spans: {label} (CPU per event)",
            median(samples[name]),
            "us/event",
            baseline=loop,
            baseline_name="hashlib.blake2b in a comprehension, same inputs",
            notes=f"{count:,} span events (hash inputs laid out beforehand)",
            samples=samples[name],
            headline=False,
        )
        for name, label in (("mapped", "map over C callables"), ("numpy", "BLAKE2b in NumPy"))
    ]


def _properties_row(ctx: BenchContext, spans: Sequence[SpanRecord]) -> Measurement:
    """What stays per event with columns: the raw rows' properties JSON (built from the columns)."""
    batches = _batches(spans, 1_000)
    columns = [columnar.load(wire_columnar.encode(batch)) for batch in batches]
    rows = [
        [row for record in batch for row in rows_from_span(record) if row.event_type != "api_request"]
        for batch in batches
    ]
    events = sum(c.m for c in columns)
    by_rows, by_columns, _ = _alternate(
        ctx,
        lambda: sum(len([orjson.dumps(r.properties) for r in batch]) for batch in rows),
        lambda: sum(len(columnar.properties_json(c)) for c in columns),
        events,
    )
    return Measurement(
        "raw properties JSON from the columns, batches of 1,000 spans (CPU per span event)",
        median(by_columns),
        "us/event",
        baseline=median(by_rows),
        baseline_name="orjson.dumps of the row path's EventRow.properties (screen's JSON), same events",
        notes=f"{events:,} span events; per event in Python either way: what a columnar raw COPY still pays",
        samples=by_columns,
        headline=False,
    )


def _encode_row(ctx: BenchContext, spans: Sequence[SpanRecord]) -> Measurement:
    batches = _batches(spans, 512)  # the exporter's default batch
    by_rows, by_columns, _ = _alternate(
        ctx,
        lambda: sum(len(wire.encode(b)) for b in batches),
        lambda: sum(len(wire_columnar.encode(b)) for b in batches),
        len(spans),
    )
    return Measurement(
        "columnar encode per span, batches of 512 (exporter side, CPU)",
        median(by_columns),
        "us/span",
        baseline=median(by_rows),
        baseline_name="wire.encode of the same SpanRecords (no privacy guard either way)",
        notes=f"{len(spans):,} spans",
        samples=by_columns,
        headline=False,
    )


_IMPORT_RSS = (
    "import psutil, msgpack; p = psutil.Process(); before = p.memory_info().rss; "
    "import numpy, pyarrow, pyarrow.compute; print((p.memory_info().rss - before) / 2**20)"
)


def _import_row() -> Measurement:
    out = subprocess.run([sys.executable, "-c", _IMPORT_RSS], capture_output=True, text=True, check=True)
    return Measurement(
        "RSS added by importing NumPy and pyarrow.compute",
        float(out.stdout.strip()),
        "MB",
        notes="fresh interpreter with msgpack loaded; the aggregator's consumer path imports neither "
        "today, so a columnar path adds this to its RSS (target < 200 MB)",
        headline=False,
    )


@bench("aggregator_columnar")
async def aggregator_columnar(ctx: BenchContext) -> list[Measurement]:
    """Columnar decode + vectorized counts vs the row path, per batch size; event ids; encode; RSS."""
    spans = make_spans(
        random.Random(25), users_of(ctx.settings, ctx.scale(5_000, 500)), ctx.scale(100_000, 5_000)
    )
    rows: list[Measurement] = []
    async with ctx.task("columnar vs row path", total=2 * len(BATCH_SPANS) + 2) as task:
        for size in BATCH_SPANS:
            rows.append(_decode_rows(ctx, spans, size))
            ctx.advance(task)
            rows.extend(_id_rows(ctx, spans, size))
            ctx.advance(task)
        rows.append(_read_row(ctx, spans))
        rows.append(_properties_row(ctx, spans))
        rows.append(_encode_row(ctx, spans))
        ctx.advance(task)
        rows.append(_import_row())
        ctx.advance(task)
    return rows
