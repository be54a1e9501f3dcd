"""Service logs: JSON lines with correlation ids, and no e-mail addresses."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from studyin_analytics.exporter.runtime.logconfig import (
    configure_logging,
    correlated,
    correlation_id,
    new_correlation_id,
)

pytestmark = pytest.mark.unit


def test_json_lines_carry_the_correlation_id_and_scrub_emails(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", logging.INFO)
    log = logging.getLogger("studyin_analytics.test")
    try:
        with correlated("batch-42"):
            log.info("processed entry for %s", "ada.lovelace@example.org")
            try:
                raise ValueError("secret detail ada.lovelace@example.org")
            except ValueError:
                log.exception("failed")
    finally:
        configure_logging("text", logging.WARNING)
    lines = [json.loads(line) for line in capfd.readouterr().err.strip().splitlines()]
    assert lines[0]["message"] == "processed entry for [email]"
    assert lines[0]["correlation_id"] == "batch-42"
    assert lines[0]["level"] == "INFO"
    assert lines[1]["exception"] == "ValueError"
    assert "ada.lovelace" not in json.dumps(lines)
    assert "secret detail" not in json.dumps(lines)


def test_correlated_sets_nests_and_restores_the_id() -> None:
    assert correlation_id.get() is None
    with correlated("batch-1712345678901-0") as outer:
        assert outer == correlation_id.get() == "batch-1712345678901-0"
        with correlated() as inner:  # a new id
            assert correlation_id.get() == inner
            assert re.fullmatch(r"[0-9a-f]{32}", inner)
        assert correlation_id.get() == outer
    assert correlation_id.get() is None
    with pytest.raises(RuntimeError), correlated("batch-2"):
        raise RuntimeError
    assert correlation_id.get() is None  # restored on errors too
    assert new_correlation_id() != new_correlation_id()


async def test_tasks_inherit_the_id_and_concurrent_blocks_do_not_mix() -> None:
    async def unit(cid: str) -> list[str | None]:
        seen: list[str | None] = []
        with correlated(cid):
            for _ in range(3):
                await asyncio.sleep(0)
                seen.append(correlation_id.get())
            seen.append(await asyncio.create_task(asyncio.sleep(0, correlation_id.get())))
        return seen

    first, second = await asyncio.gather(unit("batch-a"), unit("batch-b"))
    assert first == ["batch-a"] * 4
    assert second == ["batch-b"] * 4


def test_text_lines_end_with_the_correlation_id(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", logging.INFO)
    try:
        with correlated("batch-7"):
            logging.getLogger("studyin_analytics.test").info("in a batch")
        logging.getLogger("studyin_analytics.test").info("outside")
    finally:
        configure_logging("text", logging.WARNING)
    inside, outside = capfd.readouterr().err.strip().splitlines()
    assert inside.endswith("in a batch [batch-7]")
    assert outside.endswith("outside")


def test_service_logs_scrub_internationalized_and_percent_encoded_addresses(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging("text", logging.INFO)
    try:
        logging.getLogger("studyin_analytics.test").info("for jörg@bücher.example and ana%40hospital.example")
    finally:
        configure_logging("text", logging.WARNING)
    err = capfd.readouterr().err
    assert "for [email] and [email]" in err
    assert "jörg" not in err and "hospital" not in err
