"""``studyin-analytics demo --serve`` as a user runs it: a real process, real servers, Ctrl-C.

It plays a (small) history, checks it, takes the dashboard pictures (``--screenshots``, headless
Chromium), then serves the API and the dashboard with sign-in links and live simulated traffic;
SIGINT stops everything it started and the command exits 0.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import httpx

from studyin_analytics.aggregator.cli.settings import Settings

LINK = re.compile(r"sign in as (the top learner|staff):\s+(http://\S+)/dashboard#token=(\S+)")
START_TIMEOUT_S = 240.0


def _lines(stream: object, out: Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line)


def _wait_for_links(lines: Queue[str], seen: list[str]) -> dict[str, tuple[str, str]]:
    links: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(links) < 2 and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except Empty:
            continue
        seen.append(line)
        match = LINK.search(line)
        if match:
            links["staff" if match[1] == "staff" else "learner"] = (match[2], match[3])
    assert len(links) == 2, "".join(seen)
    return links


def _requests_last_hour(client: httpx.Client, base: str, staff: str) -> int:
    response = client.get(
        f"{base}/api/analytics/system/metrics",
        params={"window": "1h"},
        headers={"authorization": f"Bearer {staff}", "cache-control": "no-cache"},
    )
    assert response.status_code == 200, response.text
    return sum(r["requests"] for r in response.json()["routes"])


def test_demo_serve_serves_the_dashboard_with_data_and_stops_on_sigint(
    settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    env.update(settings.environment())
    command = [sys.executable, "-m", "studyin_analytics.aggregator.cli", "demo", "--serve", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--students", "12", "--days", "8", "--screenshots", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: Queue[str] = Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        links = _wait_for_links(lines, seen)
        assert any("every number above matches" in line for line in seen), "".join(seen)
        for name in ("dashboard-learner.png", "dashboard-staff.png"):
            picture = (tmp_path / name).read_bytes()
            assert picture.startswith(b"\x89PNG") and len(picture) > 20_000, name
        base, learner = links["learner"]
        staff = links["staff"][1]
        with httpx.Client(timeout=10) as client:
            page = client.get(f"{base}/dashboard")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            overview = client.get(
                f"{base}/api/analytics/learning/overview",
                params={"days": 9},
                headers={"authorization": f"Bearer {learner}"},
            )
            assert overview.status_code == 200, overview.text
            assert overview.json()["sessions"] > 0 and overview.json()["study_minutes"] > 0
            # Live traffic: the last hour's request count grows while it runs (10 s result cache).
            before = _requests_last_hour(client, base, staff)
            deadline = time.monotonic() + 60
            while _requests_last_hour(client, base, staff) <= before:
                assert time.monotonic() < deadline, "no live traffic reached the API"
                time.sleep(2)
        port = int(base.rsplit(":", 1)[1])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(seen)
        while True:  # the rest of the output, after the process ended
            try:
                seen.append(lines.get(timeout=2))
            except Empty:
                break
        assert any("stopped:" in line for line in seen), "".join(seen)
        with socket.socket() as probe:  # nothing listens any more
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
