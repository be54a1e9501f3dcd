"""The CLI prints data as data: ``:bus:`` in a key name stays text (no emoji), ``[bold]`` stays
text (no rich markup), in tables, lines and one-line errors."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from rich.console import Console

from studyin_analytics.aggregator.cli.bus import _recent, _stats, _tail
from studyin_analytics.aggregator.cli.main import main
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation.settings import Settings
from tests.support.exporter import free_port

DATA = ":bus: [bold]x[/bold] :smile:"


def console() -> Console:
    return Console(file=io.StringIO(), width=400, color_system=None)


def output(target: Console) -> str:
    file = target.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def emojis(text: str) -> list[str]:
    return [ch for ch in text if ord(ch) >= 0x1F300]


def write_event(settings: Settings) -> None:
    import redis

    now = time.time_ns()
    span = SpanRecord(
        b"\x01" * 16,
        b"\x02" * 8,
        None,
        "s",
        wire.SPAN_KIND_INTERNAL,
        now,
        now,
        0,
        {},
        [EventRecord("studyin.material_view", now, {"studyin.material.id": DATA})],
        {},
    )
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        client.xadd(stream_keys(settings)[0], wire.entry_fields(wire.encode_records([span]), 1))
    finally:
        client.close()


async def test_bus_commands_print_key_names_and_values_as_they_are(settings: Settings) -> None:
    """``bus stats`` (key names), ``bus recent`` and ``bus tail`` (event values)."""
    settings = settings.with_overrides(stream_prefix=f"{settings.stream_prefix}:bus:[bold]p[/bold]")
    write_event(settings)
    stats = console()
    assert await _stats(settings, False, stats) == 0
    assert f"{settings.stream_prefix}:events" in output(stats), output(stats)
    recent = console()
    assert await _recent(settings, None, 5, 100, recent) == 0
    assert DATA in output(recent), output(recent)
    tail = console()
    following = asyncio.create_task(_tail(settings, None, 1, 10.0, tail))
    await asyncio.sleep(0.5)
    write_event(settings)
    assert await following == 0
    assert DATA in output(tail), output(tail)
    for target in (stats, recent, tail):
        assert emojis(output(target)) == [], output(target)


def test_one_line_errors_print_urls_as_they_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error line names the URL it could not reach: a database name with ``:bus:`` or a
    closing tag ``[/x]`` in it is printed as it is (before: an emoji, or rich's MarkupError)."""
    monkeypatch.setenv("STUDYIN_ANALYTICS_POSTGRES_URL", f"postgresql://127.0.0.1:{free_port()}/db:bus:[/x]")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "db:bus:[/x]" in err and emojis(err) == [], err
