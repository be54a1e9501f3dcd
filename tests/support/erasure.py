"""Brute-force scans of every sink for planted strings (the erasure tests' own eyes: they share no
code with ``aggregator/learners``)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import redis

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from tests.support.workload import Workload
from tests.support.workload.compare import mismatches
from tests.support.workload.truth import truth_of


def redis_hits(url: str, prefix: str, needles: list[str]) -> list[str]:
    """Keys under ``prefix`` whose value (any type, every entry or member) holds a needle."""
    client = redis.Redis.from_url(url)
    found: list[str] = []
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            kind = client.type(key).decode()
            blobs: list[bytes] = []
            if kind == "stream":
                for _id, fields in client.xrange(key):
                    blobs.extend(k + v for k, v in fields.items())
            elif kind == "hash":
                blobs.extend(k + v for k, v in client.hgetall(key).items())
            elif kind == "string":
                blobs.append(client.get(key) or b"")
            elif kind == "set":
                blobs.extend(client.smembers(key))
            elif kind == "list":
                blobs.extend(client.lrange(key, 0, -1))
            elif kind == "zset":
                blobs.extend(client.zrange(key, 0, -1))
            if any(n.encode() in b for b in blobs for n in needles):
                found.append(key.decode())
    finally:
        client.close()
    return found


def pg_dump_text(postgres_url: str, schema: str) -> str:
    """``pg_dump`` of the test's schema (DDL and data) as text."""
    done = subprocess.run(
        ["pg_dump", "--dbname", postgres_url, "--schema", schema, "--no-owner"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def parquet_rows(path: Path) -> list[tuple[Any, ...]]:
    """Every row of one Parquet file, read by DuckDB."""
    with duckdb.connect() as con:
        return con.execute("SELECT * FROM read_parquet(?)", [str(path)]).fetchall()


def files_with(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` holding a needle: Parquet read row by row with DuckDB, others as bytes."""
    found: list[str] = []
    if not root.exists():
        return found
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            text = repr(parquet_rows(path))
            hit = any(n in text for n in needles)
        else:
            data = path.read_bytes()
            hit = any(n.encode() in data for n in needles)
        if hit:
            found.append(str(path.relative_to(root)))
    return found


def others_truth(wl: Workload, victim: str) -> Any:
    """Ground truth with the victim's events gone from the per-learner tables and the raw events;
    the cohort- and system-level aggregates stay as they were (docs/privacy.md)."""
    full = truth_of(wl)
    events = [e for e in wl.events if e.user != victim]
    sessions = {k: v for k, v in wl.sessions.items() if v[0] != victim}
    others = truth_of(Workload(wl.entries, events, sessions))
    return dataclasses.replace(
        others,
        summary=full.summary,
        daily_learners=full.daily_learners,
        system=full.system,
        api_durations=full.api_durations,
    )


async def rollup_mismatches(settings: Settings, truth: Any) -> list[str]:
    from studyin_analytics.aggregator.storage.db import connect

    conn = await connect(settings)  # the JSON codecs the comparison expects
    try:
        return await mismatches(conn, truth)
    finally:
        await conn.close()


async def drain(settings: Settings) -> None:
    async with Aggregator(settings) as aggregator:
        await aggregator.drain(timeout_s=60)
