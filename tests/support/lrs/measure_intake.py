"""Ralph's intake of pre-built statements against ``deliver()`` over the same statements, same count, same
batches, a fresh Ralph for each run (docs/xapi.md, "The forwarder's core"). Not a test: a measurement, until
the forwarder's figure joins the bench command.

    .venv/bin/python -m tests.support.lrs.measure_intake [statements=5000] [batch=100]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from studyin_analytics.aggregator.lrs.batches import Batch, plan_batches
from studyin_analytics.aggregator.lrs.delivery import HttpSender, deliver
from studyin_analytics.aggregator.lrs.xapi import StatementMapper
from studyin_analytics.instrumentation import events
from tests.support.lrs.ralph import RalphServer, ensure_venv
from tests.support.lrs.samples import CONFIG, rows_through_pipeline


async def raw_posts(server: RalphServer, batches: list[Batch]) -> float:
    """The LRS's own intake: the pre-serialised bodies, posted back to back."""
    bodies = [batch.body() for batch in batches]
    async with httpx.AsyncClient(auth=server.auth, timeout=120) as client:
        started = time.perf_counter()
        for body in bodies:
            answer = await client.post(
                server.statements_url, content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 200, answer.text
        return time.perf_counter() - started


async def delivered(server: RalphServer, batches: list[Batch]) -> float:
    async with httpx.AsyncClient(auth=server.auth, timeout=120) as client:
        send = HttpSender(client, server.statements_url)
        started = time.perf_counter()
        for batch in batches:
            outcome = await deliver(batch.items, send)
            assert outcome.requests == 1 and not outcome.rejected
        return time.perf_counter() - started


def main(count: int = 5000, batch_size: int = 100) -> None:
    python = ensure_venv()
    rows = rows_through_pipeline(
        (f"learner-{i % 50}", events.MaterialView, {"material_id": f"m-{i}", "material_type": "pdf"})
        for i in range(count)
    )
    started = time.perf_counter()
    batches = plan_batches([("1-0", rows)], StatementMapper(CONFIG), max_statements=batch_size).batches
    print(f"mapping and planning {count} rows: {time.perf_counter() - started:.2f} s")
    runs: list[tuple[str, Callable[[RalphServer, list[Batch]], Awaitable[float]]]] = [
        ("LRS intake", raw_posts),
        ("deliver()", delivered),
    ] * 2
    for name, run in runs:
        with (
            tempfile.TemporaryDirectory(prefix="ralph-intake-") as workdir,
            RalphServer(python, Path(workdir)) as lrs,
        ):
            seconds = asyncio.run(run(lrs, batches))
        rate = count / seconds
        print(f"{name:10s} {count} statements, batches of {batch_size}: {seconds:.2f} s, {rate:.0f}/s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
