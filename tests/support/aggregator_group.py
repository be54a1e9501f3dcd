"""``studyin-analytics aggregator`` processes under a test's control (fault injection, member
liveness, failover) and the exactness check against the workload's brute-force truth."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from studyin_analytics.aggregator.cli.settings import Settings
from tests.support.aggregator_process import exact
from tests.support.workload import Workload


class Aggregators:
    """``studyin-analytics aggregator`` subprocesses under test control."""

    def __init__(self, settings: Settings, logs: Path, **env: str) -> None:
        self.settings = settings
        self.logs = logs
        self.env = {
            **os.environ,
            **settings.environment(),
            "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0",
            "STUDYIN_ANALYTICS_BATCH_SIZE": "3",
            "STUDYIN_ANALYTICS_CLAIM_IDLE_MS": "1000",
            "STUDYIN_ANALYTICS_MAX_DELIVERY_ATTEMPTS": "50",
            **env,
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_offsets: dict[str, int] = {}
        self.kills = 0

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.log_offsets[name] = log.tell()
        self.procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "studyin_analytics.aggregator.cli",
                "aggregator",
                "--consumer-name",
                name,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until every live process has started consuming (its SIGTERM handler is set)."""
        deadline = time.monotonic() + timeout_s
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            while time.monotonic() < deadline:
                text = (self.logs / f"{name}.log").read_bytes()[self.log_offsets[name] :]
                if b" consuming " in text:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"{name} did not start consuming:\n{self.log_tail()}")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.kills += 1

    def terminate_all(self) -> dict[str, int | None]:
        """SIGTERM every live process; returns their exit codes (0 = graceful)."""
        self.wait_ready()
        codes: dict[str, int | None] = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        return codes

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-2000:] for p in sorted(self.logs.glob("*.log"))
        )


@contextlib.contextmanager
def aggregators(settings: Settings, logs: Path, **env: str) -> Iterator[Aggregators]:
    group = Aggregators(settings, logs, **env)
    try:
        yield group
    finally:
        for proc in group.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def check_exact(settings: Settings, wl: Workload) -> list[str]:
    """Every difference between the rollups and the workload's truth (empty when exact)."""
    return exact(settings, wl)
