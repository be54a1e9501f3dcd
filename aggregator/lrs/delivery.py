"""Posting a batch of statements to an LRS and isolating what it refuses.

An xAPI POST is all or nothing: one invalid statement refuses the batch (400/422), one id stored with another
content refuses it (409). :func:`deliver` halves a refused batch until each refusal is pinned on one
statement: the others land, each refused statement comes back with the LRS's status and reason (for the
dead-letter stream). k bad statements among n cost about 2·k·log2(n) extra requests.

What is not a refusal of statements is raised, never isolated: an unavailable LRS (5xx, 429, network error:
:class:`LrsUnavailable`, retry the same batch later; what already landed is answered 204 then) and a
misconfiguration (401, 403, 404...: :class:`LrsMisconfigured`, stop and say why; dead-lettering every
statement because of a wrong password would be wrong).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import orjson

from .batches import Item, body_of

REFUSED_STATUSES = frozenset({400, 409, 413, 422})
"""Answers that refuse the batch because of (some of) its statements."""
CONFLICT = 409
MAX_REASON_CHARS = 500


class LrsAnswer(NamedTuple):
    status: int
    reason: str = ""


Sender = Callable[[bytes], Awaitable[LrsAnswer]]
"""Posts one body (a JSON array of statements) and returns the LRS's answer."""


class LrsUnavailable(Exception):
    """The LRS did not take the batch for a reason of its own (5xx, 429, network): retry it later."""


class LrsMisconfigured(Exception):
    """The LRS refuses the forwarder itself (credentials, URL): nothing to isolate, stop."""


class Rejection(NamedTuple):
    item: Item
    status: int
    reason: str


@dataclass
class Outcome:
    delivered: list[Item] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    requests: int = 0

    @property
    def conflicts(self) -> list[Rejection]:
        """Ids the LRS holds with another content (policy: the first record stands; docs/xapi.md)."""
        return [r for r in self.rejected if r.status == CONFLICT]


async def deliver(items: Sequence[Item], send: Sender) -> Outcome:
    """Post ``items``; split refused batches down to the statements the LRS refuses."""
    outcome = Outcome()
    if items:
        await _deliver(list(items), send, outcome)
    return outcome


async def _deliver(items: list[Item], send: Sender, outcome: Outcome) -> None:
    answer = await send(body_of(items))
    outcome.requests += 1
    if 200 <= answer.status < 300:
        outcome.delivered += items
    elif answer.status in REFUSED_STATUSES:
        if len(items) == 1:
            outcome.rejected.append(Rejection(items[0], answer.status, answer.reason))
            return
        middle = len(items) // 2
        await _deliver(items[:middle], send, outcome)
        await _deliver(items[middle:], send, outcome)
    elif answer.status >= 500 or answer.status == 429:
        raise LrsUnavailable(f"LRS answered {answer.status}: {answer.reason}")
    else:
        raise LrsMisconfigured(f"LRS answered {answer.status}: {answer.reason}")


def lrs_reason(response: httpx.Response) -> str:
    """The LRS's reason, short and without the echoed input (pydantic-style details quote the statement)."""
    try:
        detail: Any = orjson.loads(response.content).get("detail", "")
    except (orjson.JSONDecodeError, AttributeError):
        detail = response.text
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
                parts.append(f"{location}: {error.get('msg', '')}" if location else str(error.get("msg", "")))
        detail = "; ".join(parts)
    return str(detail)[:MAX_REASON_CHARS]


class HttpSender:
    """:data:`Sender` over HTTP: ``POST <base>/statements`` (xAPI 1.0.3 header, the client's auth)."""

    def __init__(self, client: httpx.AsyncClient, statements_url: str) -> None:
        self.client = client
        self.url = statements_url

    async def __call__(self, body: bytes) -> LrsAnswer:
        try:
            response = await self.client.post(
                self.url,
                content=body,
                headers={"Content-Type": "application/json", "X-Experience-API-Version": "1.0.3"},
            )
        except httpx.TransportError as exc:
            raise LrsUnavailable(f"LRS unreachable: {type(exc).__name__}") from exc
        return LrsAnswer(response.status_code, "" if response.is_success else lrs_reason(response))
