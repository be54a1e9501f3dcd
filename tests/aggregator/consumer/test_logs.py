"""The aggregator command's JSON logs: every record of a batch or round carries its correlation id.

A real ``studyin-analytics aggregator`` runs with ``STUDYIN_ANALYTICS_LOG_FORMAT=json`` over
good entries, an undecodable one (dead-lettered while its batch is read) and a repeated one (its
round meets the stored events, is rolled back, and the entries are re-read the careful way):
each of those records names the batch or round it happened in, and no user value is logged.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support.workload import build, mismatches, push, truth_of

UNIT_ID = re.compile(r"(batch|round)-\d+-\d+")


def _unfinished(client: redis.Redis, stream: str, group: str) -> int:
    for info in client.xinfo_groups(stream):
        if info["name"].decode() == group:
            last: Any = client.xinfo_stream(stream)["last-generated-id"]
            return int(info["pending"]) + (0 if info["last-delivered-id"] == last else 1)
    return 1


def _run_until_drained(settings: Settings, log: Path) -> None:
    """The aggregator command with JSON logs into ``log``, until the group is drained; then SIGTERM."""
    env = {
        **os.environ,
        **settings.environment(),
        "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0",
        "STUDYIN_ANALYTICS_LOG_FORMAT": "json",
    }
    stream = stream_keys(settings)[0]
    client = redis.Redis.from_url(settings.redis_url or "")
    command = [
        sys.executable,
        "-m",
        "studyin_analytics.aggregator.cli",
        "aggregator",
        "--consumer-name",
        "logs-0",
    ]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _unfinished(client, stream, settings.consumer_group) and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def test_batch_and_round_records_carry_their_correlation_id(migrated: Settings, tmp_path: Path) -> None:
    wl = build(Pseudonymizer.from_settings(migrated), users=30, seed=21, spans_per_entry=10)
    stream = stream_keys(migrated)[0]
    entries = [*wl.entries, {b"v": b"1", b"n": b"1", b"d": b"\xc1 not msgpack"}, wl.entries[0]]
    push(migrated.redis_url or "", stream, entries)
    log = tmp_path / "aggregator.log"
    await asyncio.to_thread(_run_until_drained, migrated, log)

    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    consumer = [r for r in records if r["logger"].startswith("studyin_analytics.aggregator.consumer.")]
    dead = [r for r in consumer if r["message"].startswith("dead-lettering entry")]
    rolled_back = [r for r in consumer if "round met stored events" in r["message"]]
    assert len(dead) == 1, records
    assert rolled_back, records
    assert re.fullmatch(r"batch-\d+-\d+", dead[0]["correlation_id"])
    assert re.fullmatch(r"round-\d+-\d+", rolled_back[0]["correlation_id"])
    # The round is named after the first entry of its first batch, which is the dead letter's batch.
    assert rolled_back[0]["correlation_id"].removeprefix("round-") == dead[0]["correlation_id"].removeprefix(
        "batch-"
    )
    for record in consumer:
        assert UNIT_ID.fullmatch(record.get("correlation_id", "")), record
    text = log.read_text()
    for event in wl.events:
        assert event.user is None or event.user.split(":", 1)[1] not in text  # no pseudonym logged

    conn = await connect(migrated)
    try:
        assert await mismatches(conn, truth_of(wl)) == []  # and the totals are exact
    finally:
        await conn.close()
