"""The LRS forwarder's health and lag: what ``lrs-forward --status`` prints and ``/status`` serves."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ...exporter.bus import group_lag
from . import catchup, keys
from .reports import probe_lrs, probe_postgres

if TYPE_CHECKING:
    from .forwarder import Forwarder


async def forwarder_status(forwarder: Forwarder) -> dict[str, Any]:
    """Health and lag of ``forwarder``; never raises (a health probe reports instead)."""
    info: dict[str, Any] = {
        "consumer": forwarder.consumer,
        "group": forwarder.group,
        "streams": forwarder.streams,
        "lrs_url": forwarder.statements_url,
        "uptime_s": round(time.time() - forwarder.started_at, 3),
        "last_delivery_at": forwarder.last_delivery_at,
        "last_error": forwarder.last_error,
        "totals": {**asdict(forwarder.totals), "skipped": dict(forwarder.totals.skipped)},
    }
    try:
        assert forwarder.redis is not None
        info["lag"] = await forwarder.lag()
        lags = [await group_lag(forwarder.redis, s, forwarder.group) for s in forwarder.streams]
        info["pending"] = sum(lag.pending for lag in lags if lag is not None)
        dead = keys.dead_letter_keys(forwarder.settings, forwarder.streams)
        info["dead_letter_length"] = sum([int(await forwarder.redis.xlen(key)) for key in dead])
        current = await forwarder.redis.hget(forwarder.state_key, keys.CATCHUP_FIELD)
        info["catch_up"] = None if current is None else asdict(catchup.CatchUp.loads(current))
        info["redis"] = "ok"
    except Exception as exc:  # report, never raise, from a health probe
        info["redis"] = f"{type(exc).__name__}: {exc}"[:300]
    info["postgres"] = await probe_postgres(forwarder.pool) if forwarder.catch_up_enabled else "unused"
    info["lrs"] = forwarder.lrs_state
    if forwarder.lrs_state == "unknown" and forwarder.http is not None:  # nothing sent yet: ask the LRS
        info["lrs"] = await probe_lrs(forwarder.http, forwarder.statements_url)
    info["healthy"] = info["redis"] == "ok" and info["lrs"] == "ok" and info["postgres"] in ("ok", "unused")
    return info
