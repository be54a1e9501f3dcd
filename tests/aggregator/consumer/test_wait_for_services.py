"""``studyin-analytics aggregator --wait-for-services``: started before its PostgreSQL, it waits.

A real aggregator command is started while its (private, embedded) PostgreSQL is down: it logs
one line, waits through PostgreSQL starting and the schema being migrated after it, then
consumes; the rollups are exact. A wait that runs out fails as without it (exit 1, naming the
server), after the wait.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

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
    wait_for_text,
    workload,
)
from tests.support.workload import push

pytestmark = pytest.mark.slow


def test_the_aggregator_started_before_its_postgres_waits_for_it(
    settings: Settings, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    settings = settings.with_overrides(postgres_url=postgres.url, consumer_name=CONSUMER)
    wl = workload(settings, seed=62)
    log = tmp_path / "aggregator.log"
    process = start(settings, log, "--wait-for-services", "120")
    try:
        wait_for_text(log, "waiting for PostgreSQL", process)
        postgres.start()
        time.sleep(1.0)  # PostgreSQL answers, but is not migrated yet: still waiting
        assert process.poll() is None, log.read_text()
        migrate(settings)
        push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
        wait_for_text(log, " consuming ", process)
        wait_drained(settings)
        terminate(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    text = log.read_text(errors="replace")
    assert exact(settings, wl) == [], text
    assert text.count("waiting for PostgreSQL") == 1, text  # one line when waiting starts
    assert "PostgreSQL at " in text and " answers after " in text, text


def test_the_wait_is_bounded_and_then_names_the_server(
    settings: Settings, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    settings = settings.with_overrides(postgres_url=postgres.url)
    log = tmp_path / "aggregator.log"
    started = time.monotonic()
    process = start(settings, log, "--wait-for-services", "2")
    try:
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text(errors="replace")
    assert code == 1, text
    assert time.monotonic() - started >= 2.0
    assert "cannot reach PostgreSQL" in text and str(postgres.port) in text, text
