"""The ``rollups`` command line: documented invocations parse, bad ones exit 2, a run prints its summary."""

from __future__ import annotations

import asyncio
import re
import shlex
from datetime import date
from pathlib import Path

import pytest

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.aggregator.cli.main import main as cli_main
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.rebuild_tables import NOT_REBUILDABLE, REBUILDS
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.workload import build, push

ROOT = Path(__file__).resolve().parents[3]


def _documented() -> list[str]:
    text = (ROOT / "docs" / "aggregator.md").read_text() + (ROOT / "README.md").read_text()
    return re.findall(r"^studyin-analytics (rollups rebuild[^#\n]*)", text, re.MULTILINE)


@pytest.mark.unit
def test_documented_command_lines_parse() -> None:
    lines = _documented()
    assert len(lines) >= 3
    parser = build_parser()
    for line in lines:
        words = [
            w if w != "DATE" else "2026-11-20" for w in shlex.split(line.replace("[", "").replace("]", ""))
        ]
        words = [w if w != "NAME" else "system_metrics" for w in words]
        args = parser.parse_args(words)
        assert args.from_day == date(2026, 11, 20)


@pytest.mark.unit
def test_help_names_every_table_and_the_handover(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["rollups", "rebuild", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for table in [*REBUILDS, *NOT_REBUILDABLE]:
        assert table in text
    assert (
        "shared advisory lock" in text
        and "resume" in text
        and "STUDYIN_ANALYTICS_POSTGRES_REBUILD_ROLE" in text
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv", [["rollups", "rebuild"], ["rollups", "rebuild", "--from", "20.11.2026"], ["rollups"]]
)
def test_bad_usage_exits_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2


@pytest.mark.plain_variant  # `rollups rebuild` refuses the citus variant
async def test_a_run_prints_its_summary(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wl = build(Pseudonymizer.from_settings(migrated), users=4, seed=90, spans_per_entry=10)
    push(migrated.redis_url or "", stream_keys(migrated)[0], wl.entries)
    async with Aggregator(migrated) as aggregator:
        await aggregator.drain(timeout_s=60)
    for key, value in migrated.environment().items():
        monkeypatch.setenv(key, value)
    day = min(e.ns for e in wl.events) // 86_400_000_000_000
    first = date.fromordinal(date(1970, 1, 1).toordinal() + day)
    code = await asyncio.to_thread(cli_main, ["rollups", "rebuild", "--from", str(first)])
    assert code == 0
    out = " ".join(capsys.readouterr().err.split())
    assert f"{wl.event_count} raw events" in out and "live merges waited at most" in out
