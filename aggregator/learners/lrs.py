"""A learner in the Learning Record Store: listed for the access export, voided by the erasure.

xAPI 1.0.3 gives a client no way to delete a statement; the most it allows is **voiding**: a
statement with the verb ``http://adlnet.gov/expapi/verbs/voided`` whose object is a ``StatementRef``
to the voided statement. A conforming LRS keeps the voided statement stored but leaves it out of
every normal query (``GET statements`` with filters); only ``voidedStatementId`` still fetches it.

The learner's statements are found as the LRS answers ``GET statements?agent=`` for the account the
forwarder names actors by (``homePage`` = ``lrs_home_page``, ``name`` = the learner's LRS pseudonym,
under every LRS key). Each is voided by a statement whose actor is the erasure's own account
(:data:`ERASURE_ACCOUNT`), never the learner: a voiding statement cannot itself be voided, so it
must not name them. Its id is a uuid5 of the voided statement's id, so a second run posts the same
ids; an LRS that already holds one answers 409 for it (Ralph compares the stored copy, with its
``stored`` and ``authority``), which :func:`void` counts as already voided.

The verification pass (:func:`find`) asks the same query again and counts what still names the
learner: statements voided but still returned (an LRS that does not implement voiding: Ralph 5.1
is one) and statements not voided (sent after the voiding pass).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx

from ..lrs.auth import lrs_auth
from ..lrs.batches import Item
from ..lrs.delivery import CONFLICT, HttpSender, deliver
from ..lrs.settings import LrsSettings
from .identity import Learner

VOIDED_VERB: Final = "http://adlnet.gov/expapi/verbs/voided"
VOIDING_ID_NAMESPACE: Final = uuid.UUID("3f0c1d8e-5b7a-4c61-9d2e-8a4b6f1e7c35")
ERASURE_ACCOUNT: Final = "studyin-erasure"
"""The account name of the voiding statements' actor (under ``lrs_home_page``): not a learner."""
PAGE: Final = 500


class LrsRefused(RuntimeError):
    """The LRS refused voiding statements (not as duplicates): the reason, for the report."""


HEADERS: Final = {"X-Experience-API-Version": "1.0.3"}
STILL_VOIDED: Final = "returned though voided (this LRS does not hide voided statements)"
STILL_LIVE: Final = "returned, not voided"


def configured(settings: LrsSettings) -> bool:
    """True when an LRS is configured (``lrs_url``): the forwarder may have sent statements there."""
    return settings.lrs_url is not None


def client(settings: LrsSettings) -> httpx.AsyncClient:
    return httpx.AsyncClient(auth=lrs_auth(settings), timeout=settings.lrs_timeout_s, headers=HEADERS)


def voiding_id(statement_id: str) -> str:
    """The id of the statement that voids ``statement_id`` (the same in every run)."""
    return str(uuid.uuid5(VOIDING_ID_NAMESPACE, statement_id))


def _agent(settings: LrsSettings, name: str) -> dict[str, Any]:
    return {"objectType": "Agent", "account": {"homePage": settings.xapi_config().home_page, "name": name}}


def _names(statement: dict[str, Any], names: set[str]) -> bool:
    account = (statement.get("actor") or {}).get("account") or {}
    return account.get("name") in names


async def statements_of(
    http: httpx.AsyncClient, settings: LrsSettings, learner: Learner
) -> AsyncIterator[dict[str, Any]]:
    """Every statement the LRS returns whose actor is one of ``learner``'s LRS accounts."""
    names = set(learner.lrs_hashes)
    base = settings.statements_url
    origin = str(httpx.URL(base).copy_with(path="/", query=None, fragment=None)).rstrip("/")
    for name in learner.lrs_hashes:
        params: dict[str, Any] | None = {"agent": json.dumps(_agent(settings, name)), "limit": PAGE}
        url = base
        while True:
            answer = await http.get(url, params=params)
            answer.raise_for_status()
            body = answer.json()
            for statement in body.get("statements", []):
                if _names(statement, names):  # an LRS may add statements that only refer to them
                    yield statement
            more = body.get("more")
            if not more:
                break
            url, params = (more if more.startswith("http") else origin + more), None


def _voiding(settings: LrsSettings, statement_id: str) -> Item:
    own_id = voiding_id(statement_id)
    statement = {
        "id": own_id,
        "actor": _agent(settings, ERASURE_ACCOUNT),
        "verb": {"id": VOIDED_VERB, "display": {"en-US": "voided"}},
        "object": {"objectType": "StatementRef", "id": statement_id},
    }
    return Item("", statement_id, own_id, json.dumps(statement, sort_keys=True).encode())


async def void(settings: LrsSettings, learner: Learner) -> dict[str, int]:
    """Void every statement of ``learner`` the LRS returns; counts voided now and voided before."""
    async with client(settings) as http:
        targets = sorted(
            {s["id"] async for s in statements_of(http, settings, learner) if s["verb"]["id"] != VOIDED_VERB}
        )
        items = [_voiding(settings, target) for target in targets]
        voided = already = 0
        for start in range(0, len(items), settings.lrs_batch_statements):
            outcome = await deliver(
                items[start : start + settings.lrs_batch_statements],
                HttpSender(http, settings.statements_url),
            )
            voided += len(outcome.delivered)
            already += len(outcome.conflicts)
            refused = [r for r in outcome.rejected if r.status != CONFLICT]
            if refused:
                raise LrsRefused(f"the LRS refused {len(refused)} voiding statements: {refused[0].reason}")
    return {"statements voided": voided, "voided before": already}


async def find(settings: LrsSettings, learner: Learner) -> dict[str, int]:
    """What the LRS still returns for ``learner`` in a normal query: voided and not voided (0s dropped)."""
    out: dict[str, int] = {}
    async with client(settings) as http:
        async for statement in statements_of(http, settings, learner):
            answer = await http.get(
                settings.statements_url, params={"statementId": voiding_id(statement["id"])}
            )
            voided = answer.status_code == 200 and _holds_statement(answer.json())
            key = STILL_VOIDED if voided else STILL_LIVE
            out[key] = out.get(key, 0) + 1
    return out


def _holds_statement(body: Any) -> bool:
    # xAPI answers the statement itself; Ralph wraps it as {"statements": [...]}.
    if isinstance(body, dict) and "statements" in body:
        return bool(body["statements"])
    return isinstance(body, dict) and "id" in body


async def records(settings: LrsSettings, learner: Learner) -> list[dict[str, Any]]:
    """The learner's statements as the LRS returns them (the access export)."""
    async with client(settings) as http:
        return [s async for s in statements_of(http, settings, learner)]
