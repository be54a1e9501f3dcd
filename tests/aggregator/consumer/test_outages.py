"""What a real ``studyin-analytics aggregator`` logs when PostgreSQL goes away.

A private PostgreSQL (embedded, so the shared one is never touched) is stopped while the
aggregator runs and entries arrive: the log says so once (WARNING) and once when it is back
(INFO, with the outage's length), with no traceback, where it used to log a line per retry and
asyncpg's pool a traceback per attempt to restore its connection floor. Entries a previous life
read and left pending, and those read while PostgreSQL was away, go the careful way: one INFO
line each time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.devtools.embedded import EmbeddedPostgres
from studyin_analytics.aggregator.storage.schema import migrate
from studyin_analytics.exporter.bus import stream_keys
from tests.support.aggregator_process import (
    CONSUMER,
    exact,
    start,
    terminate,
    wait_drained,
    workload,
)
from tests.support.workload import push

pytestmark = pytest.mark.slow


def test_a_postgres_outage_is_logged_once_each_way_and_careful_batches_at_info(
    settings: Settings, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    postgres.start()
    settings = settings.with_overrides(postgres_url=postgres.url, consumer_name=CONSUMER)
    migrate(settings)
    wl = workload(settings, seed=61)
    first, during = wl.entries[: len(wl.entries) // 2], wl.entries[len(wl.entries) // 2 :]
    stream = stream_keys(settings)[0]
    push(settings.redis_url or "", stream, first)
    client = redis.Redis.from_url(settings.redis_url or "")
    try:  # a previous life of this member read a few entries and crashed: they are redelivered
        client.xgroup_create(stream, settings.consumer_group, id="0")
        client.xreadgroup(settings.consumer_group, CONSUMER, {stream: ">"}, count=5)
    finally:
        client.close()
    log = tmp_path / "aggregator.log"
    process = start(settings, log)
    try:
        wait_drained(settings)
        postgres.stop()  # fast shutdown: every connection of the pool is closed
        time.sleep(2.0)  # idle: only the pool notices (restoring its connection floor fails)
        push(settings.redis_url or "", stream, during)  # read while PostgreSQL is away
        time.sleep(6.0)  # several retries with backoff
        postgres.start()
        wait_drained(settings)
        terminate(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    text = log.read_text(errors="replace")
    assert exact(settings, wl) == [], text
    lines = text.splitlines()
    assert "Traceback" not in text and "Failed to restore the pool connection floor" not in text, text
    down = [line for line in lines if "PostgreSQL unavailable" in line]
    back = [line for line in lines if "PostgreSQL available again after" in line]
    assert len(down) == 1 and " WARNING " in down[0], text
    assert len(back) == 1 and " INFO " in back[0], text
    assert not [line for line in lines if "Redis unavailable" in line], text
    careful = [line for line in lines if "committed the careful way" in line]
    assert len(careful) >= 2 and all(" INFO " in line for line in careful), text  # the crash, the outage
    assert "redelivered entries (delivered up to 2 times)" in careful[0], text
    # Everything else the outage produced is at most a line or two (the round in flight, if any).
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) <= 3, text
