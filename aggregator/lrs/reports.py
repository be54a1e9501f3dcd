"""What the LRS forwarder reports: its totals, its dead letters' fields, and probes of the LRS and PostgreSQL
for the status (``--status``, ``/status``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from .batches import InvalidEvent
from .delivery import CONFLICT, LrsMisconfigured, LrsUnavailable, Rejection


@dataclass
class Totals:
    entries: int = 0
    events: int = 0
    statements_delivered: int = 0
    """Statements the LRS took (again, for re-sent ones: it stores each once)."""
    rejected: int = 0
    conflicts: int = 0
    invalid_events: int = 0
    undecodable_entries: int = 0
    requests: int = 0
    retries: int = 0
    catch_up_events: int = 0
    gaps: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def dead_letters(
    rejected: list[Rejection], invalid: list[InvalidEvent], source: str, consumer: str
) -> list[dict[Any, Any]]:
    letters: list[dict[Any, Any]] = []
    for r in rejected:
        letters.append(
            {
                "kind": "conflict" if r.status == CONFLICT else "rejected",
                "status": str(r.status),
                "reason": r.reason or f"HTTP {r.status}",
                "statement_id": r.item.statement_id,
                "event_id": r.item.event_id,
                "source_id": r.item.entry_id,
                "statement": r.item.json.decode(),
            }
        )
    for event in invalid:
        letters.append(
            {
                "kind": "invalid_event",
                "reason": event.detail,
                "event_id": event.event_id,
                "source_id": event.entry_id,
            }
        )
    for letter in letters:
        letter.update(source_stream=source, consumer=consumer)
    return letters


async def probe_postgres(pool: asyncpg.Pool | None) -> str:
    try:
        if pool is None:
            raise ConnectionError("no pool")
        await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout=2)
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


async def probe_lrs(http: httpx.AsyncClient, statements_url: str) -> str:
    """The last delivery's verdict; before any: ``GET <url>/about`` (xAPI, no credentials), else (an LRS
    without it, such as Ralph) ``GET <url>/statements?limit=1`` with the credentials (401: misconfigured;
    403: the credentials are known, without the right to read, which a forwarder does not need)."""
    headers = {"X-Experience-API-Version": "1.0.3"}
    try:
        about = await http.get(statements_url.removesuffix("/statements") + "/about", headers=headers)
        if about.status_code == 200:
            return "ok"
        answer = await http.get(statements_url, params={"limit": 1}, headers=headers)
    except httpx.HTTPError as exc:
        return f"unavailable: {type(exc).__name__}"
    except (LrsUnavailable, LrsMisconfigured) as exc:  # raised by the OAuth flow
        return f"{'misconfigured' if isinstance(exc, LrsMisconfigured) else 'unavailable'}: {exc}"
    if answer.is_success or answer.status_code == 403:
        return "ok"
    if answer.status_code in {401, 404}:
        return f"misconfigured: GET statements answered {answer.status_code}"
    return f"unavailable: GET statements answered {answer.status_code}"
