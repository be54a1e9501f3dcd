"""``studyin-analytics lrs-forward``: the LRS forwarder's command (registered by ``aggregator.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from typing import Any

EXIT_OK, EXIT_FAILURE = 0, 1


def cmd_lrs_forward(args: argparse.Namespace) -> int:
    from ...exporter.runtime.health import HealthServer
    from .forwarder import Forwarder
    from .settings import LrsSettings, load_lrs_settings

    settings = load_lrs_settings()
    if args.consumer_name:
        settings = LrsSettings.model_validate({**settings.model_dump(), "consumer_name": args.consumer_name})
    if args.health_port is not None:
        settings = LrsSettings.model_validate({**settings.model_dump(), "lrs_health_port": args.health_port})
    settings.xapi_config()  # a missing IRI base or home page: exit 2 naming it, before connecting
    settings.statements_url  # noqa: B018

    async def status() -> int:
        async with Forwarder(settings) as forwarder:
            info = await forwarder.status()
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK if info["healthy"] else EXIT_FAILURE

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Forwarder(settings) as forwarder:
            health: HealthServer | None = None
            if settings.lrs_health_port:
                health = HealthServer(forwarder.status, settings.lrs_health_host, settings.lrs_health_port)
                try:
                    await health.start()
                except OSError as exc:
                    logging.getLogger(__name__).warning("health endpoint not started: %s", exc)
                    health = None
            where = f"; health on http://{health.host}:{health.port}/status" if health else ""
            # The URL is redacted: a password in its userinfo is never printed.
            from ...instrumentation.settings_base import redact_url

            print(
                f"lrs-forward {settings.consumer_name} ({forwarder.group}) -> "
                f"{redact_url(forwarder.statements_url)}{where}",
                flush=True,
            )
            try:
                await forwarder.run(stop)
            finally:
                if health is not None:
                    await health.stop()
        return EXIT_OK

    return asyncio.run(status() if args.status else main())


def register(sub: Any) -> None:
    p = sub.add_parser(
        "lrs-forward",
        help="forward learning events to a Learning Record Store (xAPI) until SIGTERM",
        description=(
            "Join a consumer group of its own (STUDYIN_ANALYTICS_LRS_CONSUMER_GROUP) and POST the selected "
            "learning events (STUDYIN_ANALYTICS_LRS_EVENT_TYPES; system events never) as xAPI 1.0.3 "
            "statements to STUDYIN_ANALYTICS_LRS_URL with basic auth or OAuth client credentials. "
            "Statement ids derive from event ids: sending again stores nothing twice. Retries an "
            "unavailable LRS with backoff, dead-letters only the statements the LRS rejects (with its "
            "reason) to <prefix>:lrs:dead-letter, catches up from PostgreSQL's raw events when the bus "
            "trimmed entries it had not delivered. See docs/xapi.md."
        ),
    )
    p.add_argument("--consumer-name", help="stable consumer name (default: STUDYIN_ANALYTICS_CONSUMER_NAME)")
    p.add_argument(
        "--health-port",
        type=int,
        help="port of the HTTP health endpoint (/healthz, /readyz, /status); 0 disables it "
        "(default: STUDYIN_ANALYTICS_LRS_HEALTH_PORT)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print health, lag, dead letters and catch-up as JSON and exit (1 if Redis, PostgreSQL or "
        "the LRS is unavailable)",
    )
    p.set_defaults(func=cmd_lrs_forward, default_log_level="INFO")
