"""Erasure in a real LRS (Ralph): the learner's statements sent by the forwarder are listed by the access
export and voided by the erasure (one voiding statement per statement id, by an account that is not the
learner); the verification pass says what the LRS still returns for the learner. Ralph 5.1 stores the
voiding statements but does not hide voided statements from queries (its router marks voiding "not
implemented"), so the pass must report them as returned though voided: the test pins that down."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from studyin_analytics.aggregator.learners import erasure
from studyin_analytics.aggregator.learners import lrs as lrs_pass
from studyin_analytics.aggregator.learners.identity import Learner
from studyin_analytics.aggregator.lrs.forwarder import Forwarder
from studyin_analytics.aggregator.lrs.settings import LrsSettings
from tests.support.erasure import redis_hits
from tests.support.lrs.forwarding import PSEUDONYMIZER, learning_emissions, lrs_settings, publish
from tests.support.lrs.ralph import RalphServer

from .conftest import Warehouse

pytestmark = pytest.mark.timeout(1200)  # the first LRS test of a machine creates Ralph's venv


def stored(ralph: RalphServer) -> list[dict[str, Any]]:
    """Every statement record in Ralph's file (the test's own eyes: voided ones and duplicates too)."""
    if not ralph.data_file.exists():
        return []
    return [json.loads(line) for line in ralph.data_file.read_text().splitlines() if line.strip()]


def learner_of_user(user: str) -> Learner:
    assert PSEUDONYMIZER.lrs is not None
    return Learner(tuple(PSEUDONYMIZER.pseudonyms(user)), tuple(PSEUDONYMIZER.lrs.pseudonyms(user)))


async def forward(settings: LrsSettings) -> int:
    """Run the forwarder until the bus is drained; returns the entries it read."""
    async with Forwarder(settings) as forwarder:
        return (await forwarder.drain(120)).entries


def test_erasure_voids_every_statement_sent_and_the_export_lists_them(
    warehouse: Warehouse, ralph: RalphServer
) -> None:
    wh = warehouse
    emissions = list(learning_emissions(40, learners=4))
    victim_id = emissions[0][0]
    publish(wh.settings, emissions)
    settings = lrs_settings(wh.settings, ralph.url + "/xAPI", ralph, lrs_batch_statements=7)
    asyncio.run(forward(settings))
    learner = learner_of_user(victim_id)
    names = set(learner.lrs_hashes)
    theirs = {s["id"] for s in stored(ralph) if s["actor"].get("account", {}).get("name") in names}
    assert len(theirs) == 10  # every 4th emission is the victim's, each one statement

    out = io.StringIO()
    counts = asyncio.run(erasure.write_export(wh.settings, learner, out, wh.export, settings))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert counts.get("lrs") == 10
    assert {r["record"]["id"] for r in lines if r["sink"] == "lrs"} == theirs

    others_before = [s for s in stored(ralph) if s["id"] not in theirs]
    report = asyncio.run(
        erasure.erase_learner(
            wh.settings, learner, actor="t", export=wh.export, lrs_settings=settings, settle_s=0
        )
    )
    assert report.erased["lrs"] == {"statements voided": 10, "voided before": 0}
    voiding = [s for s in stored(ralph) if s["verb"]["id"] == lrs_pass.VOIDED_VERB]
    assert sorted(s["object"]["id"] for s in voiding) == sorted(theirs)
    assert all(s["object"]["objectType"] == "StatementRef" for s in voiding)
    assert not any(n in json.dumps(voiding) for n in learner.pseudonyms)  # the voiding names no learner
    # Ralph keeps voided statements in normal queries: the verification pass says so, and nothing else.
    assert report.found["lrs"] == {lrs_pass.STILL_VOIDED: 10}
    assert not report.clean
    assert [s for s in stored(ralph) if s["id"] not in theirs and s not in voiding] == others_before

    # Every bus entry held the victim (4 learners interleaved), so the erasure re-added all of them
    # without the victim: the forwarder reads them again and the LRS still holds each statement once.
    assert sum(report.erased["redis"].values()) == asyncio.run(forward(settings)) > 0
    counts = ralph.stored_ids()
    assert redis_hits(wh.settings.redis_url or "", wh.settings.stream_prefix, list(learner.pseudonyms)) == []
    assert all(counts[s["id"]] == 1 for s in others_before)
    assert {s["id"] for s in stored(ralph)} == {s["id"] for s in others_before} | theirs | {
        s["id"] for s in voiding
    }

    again = asyncio.run(
        erasure.erase_learner(
            wh.settings, learner, actor="t", export=wh.export, lrs_settings=settings, settle_s=0
        )
    )
    assert again.erased["lrs"] == {"statements voided": 0, "voided before": 10}
    assert ralph.stored_ids()[lrs_pass.voiding_id(sorted(theirs)[0])] == 1  # each voiding stored once


def test_an_lrs_that_cannot_be_reached_is_reported_skipped(warehouse: Warehouse, ralph: RalphServer) -> None:
    wh = warehouse
    settings = lrs_settings(wh.settings, "http://127.0.0.1:9/xAPI", ralph, lrs_timeout_s=2)
    learner = learner_of_user("nobody-sent")
    report = asyncio.run(
        erasure.erase_learner(
            wh.settings, learner, actor="t", export=wh.export, lrs_settings=settings, settle_s=0
        )
    )
    assert "ConnectError" in report.skipped["lrs"]
    assert not report.clean
