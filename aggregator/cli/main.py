"""``studyin-analytics``: the command line of the pipeline.

Every command reads its configuration from ``STUDYIN_ANALYTICS_*`` variables (see
``studyin-analytics --help`` and README.md). Exit codes: 0 ok, 1 failure at run time,
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

import asyncpg
import redis
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from ...exporter.connection import refused_command
from ...exporter.runtime.logconfig import configure_logging
from ..storage.db import Service
from .exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from .settings import ConfigurationError, Settings, load_settings, redact_url

# One-line errors stay one line; data (names, URLs, messages) is escaped and emoji codes are off,
# so `:bus:` or `[x]` in a key or consumer name is printed as it is.
_console = Console(stderr=True, soft_wrap=True, emoji=False)


_settings = load_settings


# --- commands --------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..storage.schema import migrate

    settings = _settings()
    migrate(settings)
    _console.print(f"schema [bold]{escape(settings.postgres_schema)}[/] is up to date")
    if args.distribute:
        from ..storage.citus import distribute, login_roles
        from ..warehouse.settings import ExportSettings

        roles = login_roles(settings, ExportSettings().postgres_role)
        for statement in asyncio.run(distribute(settings, roles)):
            _console.print(escape(statement), highlight=False)
    return EXIT_OK


GROUP_STATUS = ("group", "streams", "lag", "pending", "dead_letter_length", "redis", "postgres", "healthy")
"""What ``aggregator --status`` prints: the consumer group's health and lag (docs/aggregator.md)."""


def cmd_aggregator(args: argparse.Namespace) -> int:
    import json

    from ...exporter.runtime.health import HealthServer
    from ..consumer.service import Aggregator, tuned_gc
    from ..consumer.telemetry import AggregatorTelemetry

    settings = _settings()
    if args.consumer_name:
        settings = settings.with_overrides(consumer_name=args.consumer_name)
    if args.health_port is not None:
        settings = settings.with_overrides(aggregator_health_port=args.health_port)

    async def status() -> int:
        async with Aggregator(settings) as aggregator:
            info = await aggregator.status()
        # The group's figures only: this probe's own counters (totals, uptime, last batch) are zeros that
        # an operator would take for a running member's; those are on each member's /status.
        info = {key: info[key] for key in GROUP_STATUS if key in info}  # lag etc. absent without Redis
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK if info["healthy"] else EXIT_FAILURE

    async def main() -> int:
        if args.wait_for_services:  # before the signal handlers: a SIGTERM meanwhile just ends it
            from ..consumer.startup import wait_for_services

            await wait_for_services(settings, args.wait_for_services)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Aggregator(settings) as aggregator:
            telemetry = AggregatorTelemetry(aggregator)  # /metrics on the health port, OTEL_METRICS_EXPORTER
            await telemetry.start()
            health: HealthServer | None = None
            if settings.aggregator_health_port:
                health = HealthServer(
                    aggregator.status,
                    settings.aggregator_health_host,
                    settings.aggregator_health_port,
                    metrics=telemetry,
                )
                try:
                    await health.start()
                except OSError as exc:
                    logging.getLogger(__name__).warning(
                        "health endpoint not started on %s:%d: %s",
                        settings.aggregator_health_host,
                        settings.aggregator_health_port,
                        exc,
                    )
                    health = None
            where = f"; health on http://{health.host}:{health.port}/status" if health else ""
            streams = ", ".join(aggregator.own_streams)
            if len(aggregator.own_streams) < len(aggregator.streams):
                streams += f" (of {len(aggregator.streams)} shards; others only if nobody reads them)"
            name = escape(settings.consumer_name)
            _console.print(f"aggregator [bold]{name}[/] consuming {escape(streams + where)}")
            try:
                with tuned_gc():
                    await aggregator.run(stop)
            finally:
                if health is not None:
                    await health.stop()
                await telemetry.close()
        return EXIT_OK

    return asyncio.run(status() if args.status else main())


def cmd_api(args: argparse.Namespace) -> int:
    from ...exporter.runtime.httpserver import serve
    from ..api.app import create_app
    from ..storage.db import check_login

    settings = _settings()
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    if args.wait_for_services:
        from ..consumer.startup import wait_for_services

        asyncio.run(wait_for_services(settings, args.wait_for_services, service="api"))
    asyncio.run(check_login(settings, "api"))  # a refused login is one line and exit 1, not a traceback
    serve(create_app(settings), settings, host, port)  # header and body read deadlines
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ..devtools.demo import run_demo

    if args.screenshots is not None:
        from ..devtools.screenshots import missing_browser

        reason = missing_browser()
        if reason is not None:  # before minutes of history, not after
            _console.print(f"[red]error:[/] {escape(reason)}", highlight=False)
            return EXIT_USAGE

    demo = run_demo(
        _settings(),
        students=args.students,
        days=args.days,
        console=Console(emoji=False),
        serve=args.serve,
        host=args.host,
        port=args.port,
        screenshots=args.screenshots,
    )
    try:
        report = asyncio.run(demo)
    except KeyboardInterrupt:  # --serve ends with Ctrl-C, after everything it started has stopped
        return EXIT_OK
    return EXIT_OK if report.matches_ground_truth else EXIT_FAILURE


# --- parser ------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds, not {text}")
    return value


def _whole_number(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (``why`` says where a bound comes from)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}{why}, not {value}")
        return value

    return parse


def _add_aggregator_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "aggregator",
        help="consume the bus into PostgreSQL until SIGTERM",
        description=(
            "Join the consumer group and roll bus entries into the analytics tables with "
            "exactly-once effect. Reclaims entries of dead consumers, dead-letters poison entries, "
            "reconnects after Redis/PostgreSQL restarts, keeps daily partitions ahead and drops "
            "those past STUDYIN_ANALYTICS_RAW_RETENTION_DAYS. Stops cleanly on SIGTERM/SIGINT."
        ),
    )
    p.add_argument(
        "--consumer-name", help="stable consumer name (default: STUDYIN_ANALYTICS_CONSUMER_NAME or host name)"
    )
    p.add_argument(
        "--health-port",
        type=int,
        help="port of the HTTP health endpoint (/healthz, /readyz, /status); 0 disables it "
        "(default: STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print health and lag of the group as JSON and exit (1 if Redis or PostgreSQL is unreachable); "
        "a running member's own counters are on its health port's /status",
    )
    p.add_argument(
        "--wait-for-services",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="at start-up wait up to SECONDS for Redis and PostgreSQL (reachable, migrated, the "
        "aggregator's role created) instead of exiting 1 at once, so start-up order does not matter "
        "(default 0: no waiting)",
    )
    p.set_defaults(func=cmd_aggregator, default_log_level="INFO")


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on weeks of simulated study",
        description=(
            "Start embedded Redis and PostgreSQL unless URLs are configured, migrate, play weeks of "
            "simulated study through an instrumented backend with a simulated clock, aggregate, and "
            "print learners, the cohort, API routes, the pathways' funnels and the experiment as the "
            "query API and the rollups give them. Exits 1 if any printed number differs from the "
            "simulation's own count (then nothing is served). --serve then keeps the API, the dashboard "
            "and live simulated study running and prints sign-in links; Ctrl-C stops everything it started."
        ),
    )
    p.add_argument(
        "--students",
        type=_whole_number(1, 10_000),
        default=150,
        help="number of simulated learners, 1 to 10000 (default 150)",
    )
    p.add_argument(
        "--days",
        type=_whole_number(3, 90, " (raw events are kept 90 days)"),
        default=60,
        help="days of history, ending now, 3 to 90 (default 60)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="then keep the API, the dashboard and live simulated traffic running until Ctrl-C",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="--serve, --screenshots: bind address (default 127.0.0.1)"
    )
    p.add_argument(
        "--port", type=int, default=8000, help="--serve, --screenshots: port (default 8000; 0: any free port)"
    )
    p.add_argument(
        "--screenshots",
        type=Path,
        metavar="DIR",
        help="then take the README's dashboard screenshots into DIR with headless Chromium (the "
        "system's chromium, or STUDYIN_DEMO_CHROMIUM; make system-deps installs it)",
    )
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studyin-analytics",
        description=(
            "StudyIn analytics pipeline: app -> OpenTelemetry spans -> Redis stream bus -> "
            "aggregator -> PostgreSQL -> query API. Configured by STUDYIN_ANALYTICS_* variables "
            "(REDIS_URL, POSTGRES_URL, PSEUDONYM_KEYS, ...); see README.md."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "migrate",
        help="create or upgrade the analytics schema",
        description="Run the alembic migrations up to head. Safe to run twice and concurrently.",
    )
    p.add_argument(
        "--distribute",
        action="store_true",
        help="then, on a Citus coordinator, distribute the per-learner tables of the citus schema variant "
        "by user_hash and give the service roles LOGIN (docs/scaling-postgres.md); refused (exit 2) "
        "without the citus extension",
    )
    p.set_defaults(func=cmd_migrate)

    _add_aggregator_parser(sub)

    p = sub.add_parser(
        "api",
        help="serve the query API",
        description="Serve the analytics query API (FastAPI/uvicorn); OpenAPI at /docs and /openapi.json.",
    )
    p.add_argument("--host", help="bind address (default: STUDYIN_ANALYTICS_API_HOST)")
    p.add_argument("--port", type=int, help="port (default: STUDYIN_ANALYTICS_API_PORT)")
    p.add_argument(
        "--wait-for-services",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="at start-up wait up to SECONDS for PostgreSQL (reachable, migrated, the API's role "
        "created) instead of exiting 1 at once, so start-up order does not matter (default 0: no waiting)",
    )
    p.set_defaults(func=cmd_api, default_log_level="INFO")

    _add_demo_parser(sub)

    # The bus and gateway commands live beside this module; commands of layers above the
    # aggregator (the benchmarks) are found through an entry point, so nothing here imports them.
    from ..lrs.commands import register as register_lrs
    from ..warehouse.command import register as register_export
    from . import bus, custom, experiments, gateway, learner, rollups

    bus.register(sub)
    experiments.register(sub)
    gateway.register(sub)
    custom.register(sub)  # schemas, failed-events
    learner.register(sub)
    rollups.register(sub)
    register_lrs(sub)
    register_export(sub)
    for plugin in sorted(entry_points(group=COMMANDS_ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        plugin.load()(sub)
    return parser


COMMANDS_ENTRY_POINT_GROUP = "studyin_analytics.commands"
"""Entry points of this group are ``register(subparsers)`` functions adding CLI commands."""


SERVICE_OF_COMMAND: dict[str, Service] = {
    "aggregator": "aggregator",
    "api": "api",
    "lrs-forward": "aggregator",  # reads raw events for a catch-up (the aggregator role may)
    "learner": "erasure",  # the erasure role (revision 0022_erasure_finish)
}
"""Commands that connect to PostgreSQL as a service of their own (the others as ``admin``)."""


def _root_cause(exc: BaseException) -> BaseException:
    """The driver's error behind wrappers (SQLAlchemy's DBAPIError during ``migrate``)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, asyncpg.PostgresError | OSError | redis.RedisError):
            return exc
        inner = exc.__cause__ or getattr(exc, "orig", None) or exc.__context__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _explain(
    exc: BaseException, settings_hint: Callable[[], Settings | None], service: Service = "admin"
) -> str:
    """A one-line reason for ``exc``, naming what could not be reached without secrets."""
    from ..storage.db import service_url, url_setting

    settings = settings_hint()
    denied = refused_command(exc)
    if denied is not None:
        url = redact_url(settings.redis_url) if settings else "<unknown>"
        return f"Redis at {url} refused a command to the URL's ACL user: {denied}"
    cause = _root_cause(exc)
    if isinstance(cause, OSError) and cause.filename is not None:  # a file, not a server
        return f"cannot use {cause.filename}: {cause.strerror or cause}"
    if isinstance(cause, redis.ConnectionError | redis.TimeoutError):
        url = redact_url(settings.redis_url) if settings else "<unknown>"
        return f"cannot reach Redis at {url}: {cause.__class__.__name__}"

    def postgres() -> str:
        configured = settings is not None and (
            settings.postgres_url or getattr(settings, f"{service}_postgres_url", None)
        )
        if not configured or settings is None:
            return "<unknown>"
        return f"{redact_url(service_url(settings, service))} ({url_setting(settings, service)})"

    if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
        return f"PostgreSQL at {postgres()} refused the login: {cause}"
    if isinstance(cause, OSError | asyncpg.PostgresConnectionError | asyncpg.InvalidCatalogNameError):
        return f"cannot reach PostgreSQL at {postgres()}: {cause.__class__.__name__}: {cause}"
    return f"{exc.__class__.__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configured = Settings()
        log_format, log_level = configured.log_format, configured.log_level
    except (ValidationError, ConfigurationError):
        log_format, log_level = "text", None  # the command reports the problem itself
    # Long-running services log at INFO by default, one-shot commands only warnings.
    level_name = str(log_level or getattr(args, "default_log_level", "WARNING"))
    configure_logging(log_format, logging.DEBUG if args.verbose else getattr(logging, level_name))

    def settings_hint() -> Settings | None:
        try:
            return Settings()
        except ValidationError:
            return None

    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        _console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        if args.verbose:
            _console.print_exception()
        service = SERVICE_OF_COMMAND.get(getattr(args, "command", ""), "admin")
        _console.print(f"[red]error:[/] {escape(_explain(exc, settings_hint, service))}", highlight=False)
        return EXIT_FAILURE
    return code
