"""The bench runner with tiny fake benchmarks: rows, error rows, cleanup, files, exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import asyncpg
import pytest
import redis
from rich.console import Console

from studyin_analytics.aggregator.cli import main as cli
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.benchmarks import framework, runner
from studyin_analytics.benchmarks.framework import bench
from tests.support import ServerUrls
from tests.support.bench_fakes import SEEN

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def _schema_exists(settings: Settings, schema: str) -> bool:
    conn = await asyncpg.connect(settings.postgres_url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema))
    finally:
        await conn.close()


async def test_rows_error_row_cleanup_and_files(
    settings: Settings, fake_benches: list[str], tmp_path: Path
) -> None:
    console = Console(file=io.StringIO(), width=120)
    report = await runner.run(settings, quick=True, only=fake_benches, console=console)

    by_name = {row.name: row for row in report.rows}
    assert by_name["fake throughput"].ratio == pytest.approx(by_name["fake throughput"].value / 2.0)
    assert by_name["fake throughput"].bench == "fake_ok"
    assert by_name["fake_fail"].error == "RuntimeError: deliberate failure"
    assert report.failed
    assert [run.name for run in report.runs] == ["fake_ok", "fake_fail"]

    # the runner dropped the schema and the keys the fake created
    isolated = SEEN[0]
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        assert list(client.scan_iter(match=f"{isolated.stream_prefix}*")) == []
    finally:
        client.close()
    assert not await _schema_exists(settings, isolated.postgres_schema)

    out, chart, md = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.md"
    assert runner.write_outputs(report, out, chart, console, markdown_path=md)
    table = md.read_text()
    assert "| fake throughput |" in table and "(twice)" in table
    assert "| fake_fail | error: RuntimeError: deliberate failure |" in table
    data = json.loads(out.read_text())
    assert data["ok"] is False and data["quick"] is True
    env = data["environment"]
    for key in ("python", "packages", "cpu_count", "cpu_model", "load_average", "date", "servers"):
        assert key in env, key
    assert env["packages"]["studyin-analytics"]
    results = {r["name"]: r for r in data["results"]}
    assert results["fake_fail"]["value"] is None and results["fake_fail"]["error"]
    assert results["fake latency p99"]["met"] is True
    assert chart.read_bytes().startswith(PNG_MAGIC)


def _env(monkeypatch: pytest.MonkeyPatch, urls: ServerUrls) -> None:
    monkeypatch.setenv("STUDYIN_ANALYTICS_REDIS_URL", urls.redis_url)
    monkeypatch.setenv("STUDYIN_ANALYTICS_POSTGRES_URL", urls.postgres_url)


def test_cli_exit_code_follows_errors(
    server_urls: ServerUrls, fake_benches: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, server_urls)
    out, chart = tmp_path / "all.json", tmp_path / "all.png"
    args = ["bench", "--quick", "--out", str(out), "--chart", str(chart), "--only"]
    assert cli.main([*args, "fake_ok", "fake_fail"]) == 1
    assert json.loads(out.read_text())["ok"] is False
    assert chart.read_bytes().startswith(PNG_MAGIC)

    assert cli.main([*args, "fake_ok"]) == 0
    data = json.loads(out.read_text())
    assert data["ok"] is True
    assert [r["name"] for r in data["results"]] == ["fake throughput", "fake latency p99"]


def test_unknown_only_name_is_a_usage_error(
    fake_benches: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = cli.main(["bench", "--only", "fake_ok", "no_such_bench", "--out", str(tmp_path / "x.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no_such_bench" in err and "fake_ok" in err and "fake_fail" in err
    assert not (tmp_path / "x.json").exists()


def test_select_keeps_registration_order_and_rejects_duplicates(fake_benches: list[str]) -> None:
    assert runner.select(["fake_fail", "fake_ok", "fake_fail"]) == ["fake_fail", "fake_ok"]
    with pytest.raises(runner.UsageError):
        runner.select(["nope"])
    with pytest.raises(ValueError, match="registered twice"):
        bench("fake_ok")(framework.REGISTRY["fake_ok"])


async def test_profile_writes_stats_and_summaries(
    settings: Settings, fake_benches: list[str], tmp_path: Path
) -> None:
    console = Console(file=io.StringIO(), width=120)
    report = await runner.run(settings, quick=True, only=["fake_ok"], console=console, profile_dir=tmp_path)
    assert not report.failed
    assert (tmp_path / "fake_ok.runner.prof").stat().st_size > 0
    summary = (tmp_path / "fake_ok.runner.txt").read_text()
    assert "by own time" in summary and "fake_ok" in summary
