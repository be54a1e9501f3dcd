"""``demo --serve``: after the history, the API, the dashboard and live simulated traffic, until Ctrl-C.

The query API (with its dashboard) is served by uvicorn in this process, the aggregator keeps
consuming, and a trickle of learners keeps studying in real time (one short session after another,
played by the history's :class:`~.history.HistoryPlayer` at the pace of the wall clock). The
dashboard's address is printed with two sign-in links (a learner's and a staff member's token in
the URL fragment, which never reaches a server). SIGINT or SIGTERM stops everything it started,
in order: the traffic, the server, the aggregator. ``--screenshots DIR`` takes the README's
pictures from the same server (:mod:`.screenshots`), then stops unless ``--serve`` was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from rich.console import Console

from ...exporter.runtime.httpserver import server_config
from ..api.app import create_app
from ..cli.settings import Settings
from ..consumer.service import Aggregator
from .learners import PlannedSession

if TYPE_CHECKING:
    from .demo import Backfill

TOKEN_MINUTES = 12 * 60
TRICKLE_PAUSE_S = (1.0, 4.0)
"""Real seconds between two live sessions."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`explore` handles SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.create_server((host, port), reuse_port=False)
    sock.setblocking(False)
    return sock


async def _trickle(data: Backfill, stop: asyncio.Event) -> None:
    """Live learners, one short real-time session after another, until ``stop``."""
    rng = random.Random(17)
    player = data.player
    player.pace = True
    cast = list({s.learner.user_id: s.learner for s in data.sessions[-400:]}.values())
    while not stop.is_set() and cast:
        learner = rng.choice(cast)
        session = PlannedSession(
            learner, datetime.now(UTC), round(rng.uniform(0.25, 0.6), 3), rng.getrandbits(32)
        )
        await player.play(session)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(*TRICKLE_PAUSE_S))


async def explore(
    settings: Settings,
    data: Backfill,
    console: Console,
    *,
    host: str,
    port: int,
    screenshots: Path | None,
    serve: bool,
) -> None:
    """Serve the API and dashboard over the demo's data (see the module docstring)."""
    from .demo import STAFF_USER, token

    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    config = server_config(create_app(settings), settings, host, bound, log_config=None, access_log=False)
    server = _Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    base = f"http://{host}:{bound}"
    learner = max(data.user_ids, key=lambda u: data.ledger.xp.get(u, 0))
    tokens = {
        "learner": token(settings, learner, minutes=TOKEN_MINUTES),
        "staff": token(settings, STAFF_USER, staff=True, minutes=TOKEN_MINUTES),
    }
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with Aggregator(settings) as aggregator:
            consumer = asyncio.create_task(aggregator.run(stop))
            traffic = asyncio.create_task(_trickle(data, stop))
            while not server.started and not serving.done():  # noqa: ASYNC110  (uvicorn has no event)
                await asyncio.sleep(0.05)
            if screenshots is not None:
                from .screenshots import take_screenshots

                for path in await take_screenshots(base, tokens, screenshots):
                    console.print(f"screenshot: {path}")
                if not serve:
                    stop.set()
            if serve:
                # Links are printed whole (no wrapping): they are meant to be copied.
                console.print(f"\n[bold]dashboard[/]: {base}/dashboard", soft_wrap=True)
                console.print(
                    f"  sign in as the top learner: {base}/dashboard#token={tokens['learner']}",
                    soft_wrap=True,
                )
                console.print(
                    f"  sign in as staff:           {base}/dashboard#token={tokens['staff']}", soft_wrap=True
                )
                console.print(
                    f"  API docs: {base}/docs  (live traffic is running; Ctrl-C stops everything)",
                    soft_wrap=True,
                )
            await stop.wait()
            traffic.cancel()  # mid-session, maybe: the live part is not checked against the truth
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
            server.should_exit = True
            await serving
            await consumer
    finally:
        stop.set()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        sock.close()
    console.print("stopped: the API, the live traffic and the aggregator.")
