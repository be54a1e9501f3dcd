"""ASGI auto-instrumentation for StudyIn apps, built on ``opentelemetry-instrumentation-asgi``.

:class:`StudyInASGIMiddleware` is a subclass of the stock ``OpenTelemetryMiddleware``: it keeps
its tracer and meter set-up, its duration histograms (``http.server.request.duration`` with
``OTEL_SEMCONV_STABILITY_OPT_IN=http``, ``http.server.duration`` otherwise), its excluded-URL
handling and trace-context extraction, and replaces the per-request path with one that follows
StudyIn's rules:

* one server span per request (no ``send``/``receive`` child spans), named ``METHOD route``
  with the templated ``http.route`` on the span *and* in the duration histogram (the stock
  middleware puts the route in neither); never the raw path, which may hold ids;
* status code, span status and ``error.type`` (the exception class, or the 5xx status);
  exceptions are recorded as an ``exception`` event with the type only (no message, no
  stack trace: they can hold ids or e-mails);
* the full route template with every prefix (:mod:`.routes`), and the fixed placeholder
  ``_OTHER`` for requests no route matched, so every request is counted;
* the user as ``user.hash``, pseudonymized: from :func:`~.attribution.set_user` called by the
  app's auth code, else a configurable hook; never on authentication endpoints; no client
  address, user agent, query string or headers;
* metrics-only mode for hot paths: the latency histogram per request, no span; the
  histogram recording itself is deferred to collection time (:class:`DeferredDurations`).

:func:`instrument_app` applies it to one app; :class:`~.instrumentor.StudyInInstrumentor`
applies it to every Starlette/FastAPI app (zero-code, ``opentelemetry-instrument``). The middleware is
:mod:`.middleware`, its attributes :mod:`.http_attributes`, the deferred histogram recording
:mod:`.deferred`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from .accesslog import install_access_log_filter
from .asgi_types import ASGIApp, Message, Receive, Scope, Send
from .attribution import UserIdHook, default_user_id_hook, load_user_id_hook
from .clock import Clock
from .deferred import DeferredDurations
from .middleware import DEFAULT_AUTH_PATTERNS, SCOPE_MARK, StudyInASGIMiddleware
from .privacy import Pseudonymizer
from .settings import Settings, get_settings

_log = logging.getLogger(__name__)

__all__ = [  # the middleware lives in .middleware, the hook helpers in .attribution; imported from here too
    "DEFAULT_AUTH_PATTERNS",
    "SCOPE_MARK",
    "ASGIApp",
    "DeferredDurations",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StudyInASGIMiddleware",
    "UserIdHook",
    "default_user_id_hook",
    "disable_fastapi_native_telemetry",
    "env_settings",
    "instrument_app",
    "load_user_id_hook",
    "middleware_options",
]


def disable_fastapi_native_telemetry(app: Any) -> None:
    """Turn off the built-in OpenTelemetry of recent FastAPI versions for ``app``.

    It records ``url.path`` and ``url.query`` raw (ids, e-mails) and logs exception messages;
    StudyIn's middleware replaces it. A no-op for versions without it.
    """
    config = getattr(app, "_telemetry", None)
    if isinstance(config, dict):
        config.update(tracing=False, metrics=False, logs=False)


def middleware_options(settings: Settings | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of :class:`StudyInASGIMiddleware`: settings first, explicit overrides win."""
    options: dict[str, Any] = {}
    if settings is not None:
        if settings.auth_paths is not None:
            options["auth_patterns"] = settings.auth_paths
        if settings.metrics_only_paths:
            options["metrics_only"] = settings.metrics_only_paths
        if settings.user_id_hook:
            options["user_id_hook"] = settings.user_id_hook  # resolved when the app starts
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


def instrument_app(
    app: Any,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    pseudonymizer: Pseudonymizer | None = None,
    user_id_hook: UserIdHook | str | None = None,
    auth_patterns: Iterable[str] | None = None,
    excluded_urls: str | None = None,
    metrics_only: bool | Iterable[str] | None = None,
    settings: Settings | None = None,
    clock: Clock | None = None,
) -> Any:
    """Instrument ``app`` for StudyIn telemetry and return it.

    A Starlette/FastAPI app is instrumented in place (its middleware stack is wrapped when
    built, like ``FastAPIInstrumentor.instrument_app``) and returned, so it stays a FastAPI
    object; any other ASGI callable is returned wrapped. Unset options come from ``settings``
    (default: the environment): ``STUDYIN_ANALYTICS_AUTH_PATHS``, ``_METRICS_ONLY_PATHS``,
    ``_USER_ID_HOOK``. Excluded URLs default to ``OTEL_PYTHON_ASGI_EXCLUDED_URLS`` (then
    ``OTEL_PYTHON_EXCLUDED_URLS``). ``clock`` (a simulation's, see :mod:`.clock`) times the
    request spans; by default the SDK reads the system clock.
    """
    effective = settings if settings is not None else env_settings()
    # uvicorn's access log writes client addresses, query strings and raw paths.
    install_access_log_filter(effective.access_log if effective is not None else "route")
    options = middleware_options(
        effective,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        pseudonymizer=pseudonymizer,
        user_id_hook=user_id_hook,
        auth_patterns=tuple(auth_patterns) if auth_patterns is not None else None,
        excluded_urls=excluded_urls,
        metrics_only=metrics_only,
        clock=clock,
    )
    if settings is not None and "pseudonymizer" not in options:
        options["pseudonymizer"] = lambda: Pseudonymizer.from_settings(settings)
    try:
        from starlette.applications import Starlette
    except ImportError:  # pragma: no cover - starlette is a dependency
        Starlette = None  # type: ignore[assignment,misc]
    if Starlette is not None and isinstance(app, Starlette):
        if getattr(app, "_studyin_instrumented", False):
            return app
        original_build = app.build_middleware_stack

        def build_middleware_stack() -> ASGIApp:
            return StudyInASGIMiddleware(original_build(), routed_app=app, **options)

        disable_fastapi_native_telemetry(app)
        app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
        app.middleware_stack = None
        app._studyin_instrumented = True  # type: ignore[attr-defined]
        return app
    return StudyInASGIMiddleware(app, **options)


def env_settings() -> Settings | None:
    """The environment's settings, or ``None`` (logged, no values) when they are unusable."""
    try:
        return get_settings()
    except Exception as exc:  # unusable environment: fall back to defaults, say why (no values)
        _log.warning("STUDYIN_ANALYTICS_* settings unusable (%s); using defaults", type(exc).__name__)
        return None
