"""The mapped statements against a real LRS: Ralph's own xAPI models validate every one, Ralph's server
stores every one and returns it unchanged, sending again stores nothing new; and what Ralph itself checks
and does not check (docs/xapi.md, "What Ralph accepts")."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from studyin_analytics.aggregator.lrs.xapi import MAPPED_EVENT_TYPES, Skipped, Statement
from tests.support.lrs.ralph import RalphServer, Validator, as_sent
from tests.support.lrs.samples import MAPPER, mapped, rows_through_pipeline
from tests.support.lrs.strategies import learning_events

pytestmark = pytest.mark.timeout(1200)  # the first test of a machine creates Ralph's venv (~35-90 s)


def assert_stored_unchanged(ralph: RalphServer, statements: Sequence[Statement]) -> None:
    """Each statement read back by its id equals what was sent, and is stored once."""
    counts = ralph.stored_ids()
    for statement in statements:
        stored = ralph.get(statement["id"])
        assert stored is not None, f"{statement['id']} not stored"
        assert as_sent(stored) == statement
        assert counts[statement["id"]] == 1


@pytest.mark.parametrize("event_type", sorted(MAPPED_EVENT_TYPES))
def test_each_mapping_row_validates_against_ralphs_models(
    event_type: str, reports: dict[str, list[dict[str, Any]]]
) -> None:
    for report in reports[event_type]:
        assert report["errors"] == []
        # No Ralph profile model (video, LMS, virtual classroom, navigation) claims the statement: the
        # mapping uses no profile template it does not fill (a video's `completed` would need player data).
        assert report["profile_models"] == [] and report["profile_errors"] == []


@pytest.mark.parametrize("event_type", sorted(MAPPED_EVENT_TYPES))
def test_each_mapping_row_is_stored_by_ralph_and_read_back_unchanged(
    event_type: str, samples: dict[str, list[Statement]], ralph: RalphServer
) -> None:
    statements = samples[event_type]
    answer = ralph.post(statements)
    assert answer.status_code == 200, answer.text
    assert answer.json() == [s["id"] for s in statements]
    assert_stored_unchanged(ralph, statements)


def test_sending_again_stores_nothing_new(ralph: RalphServer) -> None:
    """Same ids, same statements: 204 and no record; a batch of old and new stores only the new."""
    old = mapped("material_view", f"learner-{uuid.uuid4().hex[:8]}")
    first = ralph.post(old)
    assert first.status_code == 200
    again = ralph.post(old)
    assert again.status_code == 204 and again.content == b""
    new = mapped("material_complete", f"learner-{uuid.uuid4().hex[:8]}")
    mixed = ralph.post([*old[:3], *new, *old[3:]])
    assert mixed.status_code == 200
    assert mixed.json() == [s["id"] for s in new]
    assert_stored_unchanged(ralph, [*old, *new])


def test_a_differing_statement_under_a_stored_id_is_refused_with_the_whole_batch(ralph: RalphServer) -> None:
    """409 for the batch: nothing of it is stored, the first version stays (the forwarder must isolate)."""
    stored, *others = mapped("material_progress", f"learner-{uuid.uuid4().hex[:8]}")
    assert ralph.post([stored]).status_code == 200
    changed = {
        **stored,
        "result": {"extensions": {"https://w3id.org/xapi/cmi5/result/extensions/progress": 1}},
    }
    answer = ralph.post([*others, changed])
    assert answer.status_code == 409
    assert stored["id"] in answer.json()["detail"]
    assert all(ralph.get(s["id"]) is None for s in others)
    assert as_sent(ralph.get(stored["id"]) or {}) == stored


def test_generated_events_validate_and_are_stored_unchanged(
    ralph: RalphServer, ralph_validate: Validator
) -> None:
    """Any valid contents of any learning event type (hypothesis), one learner: Ralph's models accept the
    statements, the server stores each once, and the learner's statements read back equal what was sent."""
    learner = f"learner-{uuid.uuid4().hex[:8]}"
    produced: list[Statement] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(event=learning_events)
    def collect(event: tuple[Any, dict[str, Any]]) -> None:
        model, fields = event
        (row,) = rows_through_pipeline([(learner, model, fields)])
        statement = MAPPER.map(row)
        assert not isinstance(statement, Skipped), statement
        produced.append(statement)

    collect()
    verdicts = ralph_validate(produced)
    bad = [(s, v) for s, v in zip(produced, verdicts, strict=True) if v["errors"] or v["profile_models"]]
    assert bad == []
    for start in range(0, len(produced), 50):
        answer = ralph.post(produced[start : start + 50])
        assert answer.status_code == 200, answer.text
    stored = {s["id"]: as_sent(s) for s in ralph.statements_of(produced[0]["actor"])}
    assert stored == {s["id"]: s for s in produced}
    counts = ralph.stored_ids()
    assert {counts[s["id"]] for s in produced} == {1}


# --- what Ralph checks itself (its server is lax: the models above are the stricter judge) -------------

ACCOUNT = {"account": {"homePage": "https://studyin.test", "name": "lrs1:" + "0" * 32}}


def _statement(**changes: Any) -> dict[str, Any]:
    base = {
        "id": str(uuid.uuid4()),
        "actor": ACCOUNT,
        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
        "object": {"id": "https://xapi.studyin.test/activities/materials/x"},
    }
    return {**base, **changes}


ACCEPTED_BUT_INVALID = {
    "verb id that is not an IRI": _statement(verb={"id": "not an iri"}),
    "scaled score out of [-1, 1]": _statement(result={"score": {"scaled": 3}}),
    "duration that is not ISO 8601": _statement(result={"duration": "1 hour"}),
    "timestamp that is not a time": _statement(timestamp="yesterday"),
    "extension key that is not an IRI": _statement(context={"extensions": {"progress": 1}}),
    "unknown top-level property": _statement(foo=1),
    "version 2.0.0": _statement(version="2.0.0"),
}


def test_ralphs_server_stores_statements_its_own_models_refuse(
    ralph: RalphServer, ralph_validate: Validator
) -> None:
    cases = list(ACCEPTED_BUT_INVALID.values())
    verdicts = ralph_validate(cases)
    assert all(v["errors"] for v in verdicts), [
        n for n, v in zip(ACCEPTED_BUT_INVALID, verdicts, strict=True) if not v["errors"]
    ]
    for name, statement in ACCEPTED_BUT_INVALID.items():
        answer = ralph.post([statement])
        assert answer.status_code == 200, (name, answer.status_code)


def test_what_ralphs_server_refuses_and_how(ralph: RalphServer) -> None:
    """422 for a missing property or a malformed id, 400 for one id twice in a batch, and 500 (a Ralph bug:
    its error detail cannot be serialised) for an invalid mbox, which a forwarder must not retry forever."""
    one = _statement()
    refused = {
        "missing verb": ([{k: v for k, v in one.items() if k != "verb"}], 422),
        "malformed id": ([_statement(id="not-a-uuid")], 422),
        "object without id": ([_statement(object={"objectType": "Activity"})], 422),
        "same id twice": ([one, one], 400),
        "empty batch": ([], 400),
        "invalid mbox": ([_statement(actor={"mbox": "not-an-address"})], 500),
    }
    for name, (batch, status) in refused.items():
        answer = ralph.post(batch)
        assert answer.status_code == status, (name, answer.status_code, answer.text[:300])
    assert ralph.get(one["id"]) is None


def test_without_the_launcher_fix_every_post_after_the_first_fails(
    ralph_python: Path, tmp_path: Path
) -> None:
    """Why ralph_launcher.py sets the file-system backend to append: Ralph 5.1.0 as shipped answers 500 to
    the second POST ("fs_lrs.jsonl already exists"). When this fails, Ralph fixed it: drop the patch."""
    stock = RalphServer(ralph_python, tmp_path, extra_env={"RALPH_TEST_STOCK_WRITE_MODE": "1"})
    with stock:
        assert stock.post([_statement()]).status_code == 200
        second = stock.post([_statement()])
        assert second.status_code == 500
    assert "already exists" in stock.log_tail()
