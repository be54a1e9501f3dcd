"""The aggregator's custom-event gate gives every row the verdict of :func:`failed_of` (the one validation,
errors included) on its fast path too (pure functions, no servers)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest

from studyin_analytics.aggregator.consumer.custom_events import CustomGate, custom_row, failed_of
from studyin_analytics.aggregator.consumer.mapping import EventRow, time_of
from studyin_analytics.instrumentation.custom_schemas import CompiledSchema, CustomRegistry
from studyin_analytics.instrumentation.custom_tracking import custom_attributes
from tests.support.custom_events import CASE, QUIZ, case_schema, quiz_schema

pytestmark = pytest.mark.unit

LOOSE = "org.example/loose"
"""Registered by hand, outside the registrable subset: additional properties allowed (no fast path)."""
ABSENT = object()


def _registry() -> CustomRegistry:
    # With a "$" key an object of one property has two: the gate must not validate it with that key.
    loose = {"type": "object", "minProperties": 2, "properties": {"score": {"type": "number"}}}
    return CustomRegistry(
        {
            (CASE, "1-0-0"): CompiledSchema.compile(CASE, "1-0-0", case_schema()),
            (QUIZ, "1-0-0"): CompiledSchema.compile(QUIZ, "1-0-0", quiz_schema()),
            (LOOSE, "1-0-0"): CompiledSchema.compile(LOOSE, "1-0-0", loose),
        }
    )


def _row(n: int, name: Any, version: Any, properties: dict[str, Any]) -> EventRow:
    event_type, stored = custom_row(custom_attributes(name, version, properties))
    time_us = 1_764_800_000_000_000 + n
    return EventRow(uuid.UUID(int=n), time_of(time_us), event_type, "k:" + "a" * 32, None, stored, time_us)


def _payloads() -> list[dict[str, Any]]:
    grid: list[list[tuple[str, Any]]] = [
        [("case_id", v) for v in ("c1", "x" * 70, 5, True, ABSENT)],
        [("score", v) for v in (0, 100, 101, -1, True, 1.0, 50.5, "7", float("nan"), ABSENT)],
        [("passed", v) for v in (True, 1, ABSENT)],
        [("quiz", v) for v in ("q12", "x", ABSENT)],
        [(k, v) for k, v in (("$version", "sneaky"), ("$other", 1), ("comment", "x"), ("", ABSENT))],
    ]
    return [{k: v for k, v in combination if v is not ABSENT} for combination in itertools.product(*grid)]


def test_the_gate_gives_the_verdicts_and_errors_of_the_one_validation() -> None:
    registry = _registry()
    gate = CustomGate()
    gate.use(registry)
    names = [(CASE, "1-0-0"), (QUIZ, "1-0-0"), (LOOSE, "1-0-0"), (CASE, "9-0-0"), ("not qualified", "1-0-0")]
    rows = [
        _row(n, name, version, properties)
        for n, ((name, version), properties) in enumerate(itertools.product(names, _payloads()))
    ]
    expected = [failed_of(row, registry) for row in rows]
    assert 0 < sum(e is None for e in expected) < len(rows)  # both verdicts are exercised
    failed, unknown = gate.failed_rows(rows)
    assert failed == [e for e in expected if e is not None]
    assert unknown
    for row, verdict in zip(rows, expected, strict=True):  # row by row: the unknown flag too
        one, one_unknown = gate.failed_rows([row])
        assert one == ([] if verdict is None else [verdict])
        assert one_unknown == (registry.get(row.event_type, row.properties.get("$version", "")) is None)


@pytest.mark.parametrize("version", [["1-0-0"], {"v": 1}, 1, None, 1.5])
def test_a_version_that_is_not_text_is_a_failed_event_not_a_crash(version: Any) -> None:
    """A hostile sender's ``$version`` (an unhashable list, a number) fails that event alone; the
    entry is not retried until dead-lettered whole."""
    registry = _registry()
    gate = CustomGate()
    gate.use(registry)
    time_us = 1_764_800_000_000_000
    row = EventRow(
        uuid.UUID(int=7),
        time_of(time_us),
        CASE,
        "k:" + "a" * 32,
        None,
        {"$version": version, "case_id": "c1"},
        time_us,
    )
    failed, _ = gate.failed_rows([row])
    assert failed == [failed_of(row, registry)] and failed[0] is not None
    assert failed[0].errors and "SchemaVer" in failed[0].errors[0].reason
