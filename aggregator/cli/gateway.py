"""The ``gateway`` command: serve OTLP/HTTP ``POST /v1/traces`` and ``POST /v1/logs`` into the bus."""

from __future__ import annotations

import argparse

from .console import data, new_console
from .exit_codes import EXIT_OK
from .settings import load_settings


def cmd_gateway(args: argparse.Namespace) -> int:
    from ...exporter.gateway.app import create_gateway
    from ...exporter.runtime.httpserver import serve

    settings = load_settings()
    host = args.host or settings.gateway_host
    port = args.port if args.port is not None else settings.gateway_port
    app = create_gateway(settings)
    new_console(stderr=True).print(
        data(f"OTLP/HTTP gateway on http://{host}:{port}/v1/traces, /v1/logs -> bus {settings.stream_prefix}")
    )
    serve(app, settings, host, port)  # header and body read deadlines
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``gateway`` command to the ``studyin-analytics`` parser."""
    p = subparsers.add_parser(
        "gateway",
        help="serve OTLP/HTTP POST /v1/traces and /v1/logs (studyin.* events) into the bus",
        description=(
            "OTLP/HTTP receiver for a collector's otlphttp exporter: protobuf or JSON, gzip, partial "
            "success; 503 with Retry-After while Redis is unreachable. Applies the privacy guard (needs "
            "STUDYIN_ANALYTICS_PSEUDONYM_KEYS) before writing to the bus."
        ),
    )
    p.add_argument("--host", help="bind address (default: STUDYIN_ANALYTICS_GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="port (default: STUDYIN_ANALYTICS_GATEWAY_PORT, 4328)")
    p.set_defaults(func=cmd_gateway, default_log_level="INFO")
