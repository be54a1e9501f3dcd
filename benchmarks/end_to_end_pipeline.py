"""End to end, the pipeline side: ``studyin-analytics aggregator`` processes, the CPU meter of a run, and
the checks that the group has drained and that PostgreSQL holds the ledger's totals. See end_to_end.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from ..aggregator.cli.settings import Settings, require
from ..aggregator.devtools.simulation import Ledger
from ..aggregator.storage.db import connect
from ..aggregator.storage.variant import LEARNERLESS_TABLE
from ..exporter.bus import group_lag, stream_keys
from ..instrumentation.privacy import Pseudonymizer
from .end_to_end_apps import READY_TIMEOUT_S

AGGREGATOR_COMMAND = (sys.executable, "-m", "studyin_analytics.aggregator.cli", "aggregator")
"""``studyin-analytics aggregator``, run by this interpreter (whatever the PATH holds)."""
STOP_TIMEOUT_S = 20.0


def aggregator_env(settings: Settings) -> dict[str, str]:
    """Environment for a ``studyin-analytics aggregator`` child that shares ``settings``."""
    require(settings.redis_url, "redis_url")
    require(settings.postgres_url, "postgres_url")
    env = {**os.environ, **settings.environment(), **settings.environment("consumer_group", "pseudonym_keys")}
    if settings.pseudonym_keys:
        env["STUDYIN_ANALYTICS_PSEUDONYM_KEY_ID"] = settings.active_key_id or ""
    return env


class AggregatorProcesses:
    """``studyin-analytics aggregator`` children, stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, settings: Settings, count: int, log_dir: Path, profile: Path | None = None) -> None:
        self.settings = settings
        self.profile = profile
        self.names = [f"{settings.consumer_name}-{i}" for i in range(count)]
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = aggregator_env(self.settings)
        for index, name in enumerate(self.names):
            command = [*AGGREGATOR_COMMAND, "--consumer-name", name]
            if self.profile is not None:  # cProfile writes its file when SIGTERM ends the run cleanly
                path = self.profile.with_name(f"{self.profile.stem}-{index}.prof")
                command[1:1] = ["-m", "cProfile", "-o", str(path)]  # python -m cProfile -o F -m ...
            with open(self.log_dir / f"{name}.log", "wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def check(self) -> None:
        for name, process in zip(self.names, self.processes, strict=True):
            if process.poll() is not None:
                raise RuntimeError(
                    f"aggregator {name} exited with code {process.returncode}: {self.log_tail(name)}"
                )

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the running aggregators."""
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(process.pid).cpu_times()
                total += times.user + times.system
        return total

    def client_ports(self) -> set[int]:
        """Local TCP ports of the aggregators' connections (to find their PostgreSQL backends)."""
        ports: set[int] = set()
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                for connection in psutil.Process(process.pid).net_connections(kind="tcp"):
                    if connection.laddr:
                        ports.add(int(connection.laddr.port))
        return ports

    def log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            lines = (self.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:])
        return ""

    async def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, max(deadline - time.monotonic(), 0.1))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)


_CLIENT_PORT = re.compile(r"\((\d+)\)")


class CpuMeter:
    """CPU seconds since creation: this (coordinating) process, the aggregators, the servers and
    the whole machine (busy); the app processes report their own.

    ``servers`` counts the Redis processes, PostgreSQL's own background processes, and only
    those PostgreSQL backends that serve the aggregators' connections, so other clients of a
    shared PostgreSQL are left out (other clients of a shared Redis are not).
    """

    def __init__(self, aggregators: AggregatorProcesses | None = None) -> None:
        self.aggregators = aggregators
        self.app = time.process_time()
        self.children = aggregators.cpu_seconds() if aggregators else 0.0
        self.machine = self._busy()
        self.ports = aggregators.client_ports() if aggregators else set()
        self.servers = self._servers()

    def _servers(self) -> dict[int, float]:
        """CPU seconds of each server process that works for this run, by pid."""
        out: dict[int, float] = {}
        for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            name = process.info["name"] or ""
            times = process.info["cpu_times"]
            if times is None or not name.startswith(("postgres", "redis-server")):
                continue
            if name.startswith("postgres"):
                client = _CLIENT_PORT.search(" ".join(process.info["cmdline"] or ()))
                if client is not None and int(client.group(1)) not in self.ports:
                    continue  # a backend serving somebody else
            out[process.pid] = times.user + times.system
        return out

    def _servers_since(self) -> float:
        """Server CPU since creation (processes that ended meanwhile are not counted)."""
        now = self._servers()
        return sum(max(cpu - self.servers.get(pid, 0.0), 0.0) for pid, cpu in now.items())

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def read(self) -> dict[str, float]:
        return {
            "bench": time.process_time() - self.app,
            "aggregators": (self.aggregators.cpu_seconds() if self.aggregators else 0.0) - self.children,
            "servers": self._servers_since(),
            "machine": self._busy() - self.machine,
        }


async def _group_state(client: aioredis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    with contextlib.suppress(aioredis.ResponseError):
        for entry in await client.xinfo_groups(stream):
            name = entry["name"]
            if (name.decode() if isinstance(name, bytes) else name) == group:
                return dict(entry)
    return None


async def wait_ready(client: aioredis.Redis, settings: Settings, aggregators: AggregatorProcesses) -> None:
    """Until every aggregator has joined the group (it shows up as a consumer once it reads)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    stream = stream_keys(settings)[0]
    wanted = set(aggregators.names)
    while time.monotonic() < deadline:
        aggregators.check()
        if await _group_state(client, stream, settings.consumer_group) is not None:
            consumers = await client.xinfo_consumers(stream, settings.consumer_group)
            names = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in consumers}
            if wanted <= names:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"aggregators not consuming after {READY_TIMEOUT_S:.0f}s")


async def drained(client: aioredis.Redis, settings: Settings) -> bool:
    """True when the group has read and acknowledged every entry of every stream."""
    for stream in stream_keys(settings):
        if not await client.exists(stream):
            continue
        lag = await group_lag(client, stream, settings.consumer_group)
        if lag is None or lag.behind:
            return False
    return True


async def check_totals(settings: Settings, ledger: Ledger) -> list[str]:
    """Differences between PostgreSQL and the ledger (empty when every total matches)."""
    problems: list[str] = []
    pseudonymizer = Pseudonymizer.from_settings(settings)
    conn = await connect(settings)
    try:
        raw = "analytics_events"
        if await conn.fetchval("SELECT to_regclass($1)", LEARNERLESS_TABLE) is not None:  # citus variant
            raw = f"(SELECT event_type FROM {raw} UNION ALL SELECT event_type FROM {LEARNERLESS_TABLE}) AS r"
        rows = await conn.fetch(f"SELECT event_type, count(*) AS n FROM {raw} GROUP BY 1")
        got = {r["event_type"]: int(r["n"]) for r in rows}
        for event_type in sorted(set(got) | set(ledger.events)):
            want = ledger.events.get(event_type, 0)
            if got.get(event_type, 0) != want:
                problems.append(f"{event_type}: {got.get(event_type, 0)} rows, ledger {want}")
        daily = await conn.fetch(
            "SELECT user_hash, sum(sessions) AS sessions, sum(materials_viewed) AS viewed, "
            "sum(materials_completed) AS completed, sum(xp) AS xp "
            "FROM daily_activity_summary GROUP BY user_hash"
        )
    finally:
        await conn.close()
    by_user = {
        r["user_hash"]: (int(r["sessions"]), int(r["viewed"]), int(r["completed"]), int(r["xp"]))
        for r in daily
    }
    users = set(ledger.sessions) | set(ledger.materials_viewed) | set(ledger.xp)
    wrong = 0
    for user in users:
        expected = (
            ledger.sessions.get(user, 0),
            ledger.materials_viewed.get(user, 0),
            ledger.materials_completed.get(user, 0),
            ledger.xp.get(user, 0),
        )
        if by_user.pop(pseudonymizer.pseudonymize(user), (0, 0, 0, 0)) != expected:
            wrong += 1
    if wrong:
        problems.append(
            f"daily_activity_summary differs from the ledger for {wrong} of {len(users)} students"
        )
    if by_user:
        problems.append(f"daily_activity_summary has {len(by_user)} users the simulation does not know")
    return problems
