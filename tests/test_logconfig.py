"""Service logs: JSON lines with correlation ids, and no e-mail addresses."""

from __future__ import annotations

import json
import logging

import pytest

from studyin_analytics.aggregator.logconfig import configure_logging, correlation_id


def test_json_lines_carry_the_correlation_id_and_scrub_emails(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", logging.INFO)
    log = logging.getLogger("studyin_analytics.test")
    token = correlation_id.set("batch-42")
    try:
        log.info("processed entry for %s", "ada.lovelace@example.org")
        try:
            raise ValueError("secret detail ada.lovelace@example.org")
        except ValueError:
            log.exception("failed")
    finally:
        correlation_id.reset(token)
        configure_logging("text", logging.WARNING)
    lines = [json.loads(line) for line in capfd.readouterr().err.strip().splitlines()]
    assert lines[0]["message"] == "processed entry for [email]"
    assert lines[0]["correlation_id"] == "batch-42"
    assert lines[0]["level"] == "INFO"
    assert lines[1]["exception"] == "ValueError"
    assert "ada.lovelace" not in json.dumps(lines)
    assert "secret detail" not in json.dumps(lines)
