"""docs/xapi.md says what the mapping does, exactly: each row of its tables against the statements of the
sample events (pure)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from studyin_analytics.aggregator.lrs import xapi
from studyin_analytics.aggregator.lrs.xapi import Skipped, Statement, StatementMapper
from tests.support import ROOT
from tests.support.lrs.samples import CONFIG, SAMPLES, sample_rows

DOC = ROOT / "docs" / "xapi.md"
MAPPER = StatementMapper(CONFIG)
CODE = re.compile(r"`([^`]+)`")


def table(heading_cell: str) -> list[list[str]]:
    """Rows (cells) of the Markdown table whose header starts with ``| heading_cell |``."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def iris(cell: str) -> set[str]:
    """The IRIs named in a cell (`{base}` resolved), other code spans (field names) left out."""
    found = {c.replace("{base}", CONFIG.iri_base) for c in CODE.findall(cell)}
    return {c for c in found if c.startswith("http")}


def result_keys(statement: Statement) -> set[str]:
    keys: set[str] = set()
    for key, value in statement.get("result", {}).items():
        if key == "extensions":
            keys |= set(value)
        elif key == "score":
            keys |= {f"score.{k}" for k in value}
        else:
            keys.add(key)
    return keys


def context_keys(statement: Statement) -> set[str]:
    context: dict[str, Any] = dict(statement["context"])
    keys = set(context.get("extensions", {})) - {xapi.EXT_SESSION_ID}
    if "contextActivities" in context:
        keys.add("contextActivities.other")
    return keys


def produced(event_type: str) -> list[Statement]:
    out = [MAPPER.map(row) for row in sample_rows(event_type)]
    assert not any(isinstance(s, Skipped) for s in out)
    return out  # type: ignore[return-value]


MAPPING_ROWS = {CODE.findall(row[0])[0]: row for row in table("event") if len(CODE.findall(row[0])) == 1}


def test_the_table_has_one_row_per_learning_event_type_and_names_the_system_events() -> None:
    assert set(MAPPING_ROWS) == xapi.MAPPED_EVENT_TYPES
    system_row = [row for row in table("event") if len(CODE.findall(row[0])) > 1]
    assert [set(CODE.findall(row[0])) for row in system_row] == [set(xapi.SYSTEM_EVENT_TYPES)]
    assert "never mapped" in system_row[0][1]


@pytest.mark.parametrize("event_type", sorted(xapi.MAPPED_EVENT_TYPES))
def test_each_row_says_what_the_statements_carry(event_type: str) -> None:
    _, verb, object_id, object_type, result, context = MAPPING_ROWS[event_type]
    statements = produced(event_type)
    assert {s["verb"]["id"] for s in statements} == iris(verb)
    ids = {c.replace("{base}", CONFIG.iri_base) for c in CODE.findall(object_id)}
    for statement in statements:
        assert any(statement["object"]["id"].startswith(i.split("<")[0]) for i in ids)
        if "<" not in object_id:
            assert statement["object"]["id"] in ids
    if object_type.startswith("by material type"):
        assert {s["object"]["definition"]["type"] for s in statements} <= set(
            xapi.MATERIAL_ACTIVITY_TYPES.values()
        )
    else:
        assert {s["object"]["definition"]["type"] for s in statements} == iris(object_type)
    documented_result = iris(result) | {c for c in CODE.findall(result) if not c.startswith("http")}
    documented_result = {c.replace("{base}", CONFIG.iri_base) for c in documented_result}
    assert set().union(*(result_keys(s) for s in statements)) == documented_result
    documented_context = iris(context) | (
        {"contextActivities.other"} if "contextActivities.other" in context else set()
    )
    assert set().union(*(context_keys(s) for s in statements)) == documented_context


def test_the_material_type_table_is_the_code() -> None:
    documented = {CODE.findall(a)[0]: CODE.findall(b)[0] for a, b in table("material type")}
    assert documented == {kind.value: iri for kind, iri in xapi.MATERIAL_ACTIVITY_TYPES.items()}
    assert set(documented) == {row["material_type"] for row in SAMPLES["material_view"]}


def test_the_documented_statement_id_namespace_and_timestamp_form_are_the_code() -> None:
    text = DOC.read_text()
    assert f"uuid5({xapi.STATEMENT_ID_NAMESPACE}, str(event id))" in text
    assert "`2026-03-01T12:00:00.000000Z`" in text
    assert xapi.EXT_SESSION_ID in text and "`PT1H2M3.46S`" in text
