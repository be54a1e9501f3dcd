"""The columnar prototype (not on the live path) against the row path, server-free: the same events
(ids, types, times, validated learners) and the same per-key deltas of the main rollups, or
:class:`Unvectorizable` (the batch would go the row way), never a different answer."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.consumer import columnar, columnar_counts, columnar_ids, histogram
from studyin_analytics.aggregator.consumer.counting import RollupInputError
from studyin_analytics.aggregator.consumer.mapping import event_id
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.event_types import micros_of
from studyin_analytics.exporter.wire import SpanRecord
from tests.support.columnar import (
    columnar_blob,
    columnar_counts_of,
    columnar_events,
    row_counts,
    row_events,
    same,
    studyin_records,
)
from tests.support.pipeline import PSEUDONYMIZER
from tests.support.workload import build

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("spans_per_batch", [7, 37, 512])
def test_the_workload_gives_the_row_paths_events_and_deltas(spans_per_batch: int) -> None:
    workload = build(PSEUDONYMIZER, users=80, seed=spans_per_batch, spans_per_entry=spans_per_batch)
    records = [record for entry in workload.entries for record in wire.decode_entry(entry)]
    for i in range(0, len(records), spans_per_batch):
        chunk = records[i : i + spans_per_batch]
        blob = columnar_blob(chunk)
        assert columnar_events(blob) == row_events(chunk)
        found, expected = columnar_counts_of(blob), row_counts(chunk)
        for table in expected:
            assert same(found[table], expected[table]), table


@settings(max_examples=400, deadline=None)
@given(studyin_records())
def test_random_batches_give_the_row_paths_answer_or_go_the_row_way(records: list[SpanRecord]) -> None:
    try:
        expected = row_counts(records)
    except RollupInputError:
        expected = None
    blob = columnar_blob(records)
    try:
        found_events = columnar_events(blob)
        found = columnar_counts_of(blob)
    except columnar.Unvectorizable:
        return
    assert found_events == row_events(records)
    assert expected is not None, "the row path refused a field the vectorized one counted"
    for table in expected:
        assert same(found[table], expected[table]), table


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.integers(0, 2**16)
        ),
        max_size=40,
    )
)
def test_every_event_id_function_gives_the_mapping_ids(keys: list[tuple[bytes, bytes, int]]) -> None:
    traces = np.frombuffer(b"".join(k[0] for k in keys), dtype=np.uint8).reshape(-1, 16)
    spans = np.frombuffer(b"".join(k[1] for k in keys), dtype=np.uint8).reshape(-1, 8)
    inputs = columnar_ids.hash_inputs(traces, spans, np.array([k[2] for k in keys], dtype=np.int64))
    expected = b"".join(event_id(*k).bytes for k in keys)
    assert columnar_ids.ids_loop(inputs) == expected
    assert columnar_ids.ids_mapped(inputs) == expected
    assert columnar_ids.ids_numpy(inputs) == expected


def test_the_numpy_blake2b_is_blake2b() -> None:
    keys = np.frombuffer(bytes(range(28)) + bytes(28), dtype=np.uint8).reshape(2, 28)
    expected = b"".join(hashlib.blake2b(bytes(k), digest_size=16).digest() for k in keys)
    assert columnar_ids.ids_numpy(keys) == expected


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=50))
def test_event_times_round_as_micros_of(times: list[int]) -> None:
    assert columnar.micros(np.array(times, dtype=np.int64)).tolist() == [micros_of(t) for t in times]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e9, allow_nan=False), min_size=1, max_size=50))
def test_latency_buckets_are_the_histograms(values: list[float]) -> None:
    found = columnar_counts.buckets(np.array(values, dtype=np.float64)).tolist()
    assert found == [histogram.bucket(v) for v in values]


def test_bucket_boundaries_are_the_histograms() -> None:
    """Values at and next to each bucket's upper bound, where a log one ULP off would move them."""
    bounds = [histogram.GAMMA**k for k in range(-700, 1500)]
    values = [x for b in bounds for x in (math.nextafter(b, 0), b, math.nextafter(b, math.inf))]
    found = columnar_counts.buckets(np.array(values, dtype=np.float64)).tolist()
    assert found == [histogram.bucket(v) for v in values]
