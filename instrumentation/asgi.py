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
applies it to every Starlette/FastAPI app (zero-code, ``opentelemetry-instrument``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from timeit import default_timer
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation._semconv import (
    _report_new,
    _report_old,
    _set_http_flavor_version,
    _set_http_method,
    _set_http_scheme,
)
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware, asgi_getter, asgi_setter
from opentelemetry.instrumentation.propagators import get_global_response_propagator
from opentelemetry.instrumentation.utils import (
    _start_internal_or_server_span,
    http_status_to_status_code,
    is_http_instrumentation_enabled,
)
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter_provider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.http import ExcludeList, get_excluded_urls, parse_excluded_urls, sanitize_method

from . import semconv
from .accesslog import install_access_log_filter
from .attribution import (
    UserIdHook,
    current_request_slot,
    default_user_id_hook,
    load_user_id_hook,
    resolve_user_id_hook,
)
from .privacy import Pseudonymizer
from .routes import RouteResolver
from .settings import ConfigurationError, Settings, get_settings

_log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = [  # the hook helpers moved to .attribution; imported from here by older code
    "StudyInASGIMiddleware",
    "UserIdHook",
    "default_user_id_hook",
    "instrument_app",
    "load_user_id_hook",
]

DEFAULT_AUTH_PATTERNS: tuple[str, ...] = (
    r"/auth(/|$)",
    r"/login",
    r"/logout",
    r"/token",
    r"/register",
    r"/signup",
    r"/sign-up",
    r"/password",
    r"/oauth",
    r"/sso",
    r"/mfa",
    r"/2fa",
    r"/verify-email",
)
"""Paths whose requests are measured but never attributed to a user (regexes, searched)."""

_SCOPE_MARK = "studyin_analytics.instrumented"
"""Set in the scope by the outermost StudyIn middleware, so nested apps are not measured twice."""
_SHUTDOWN_FLUSH_MILLIS = 5000
_FASTAPI_TELEMETRY_KEY = "fastapi.telemetry"
_ATTRIBUTE_CACHE_SIZE = 4096


def disable_fastapi_native_telemetry(app: Any) -> None:
    """Turn off the built-in OpenTelemetry of recent FastAPI versions for ``app``.

    It records ``url.path`` and ``url.query`` raw (ids, e-mails) and logs exception messages;
    StudyIn's middleware replaces it. A no-op for versions without it.
    """
    config = getattr(app, "_telemetry", None)
    if isinstance(config, dict):
        config.update(tracing=False, metrics=False, logs=False)


# Stable (new) and legacy (old) attribute names.
_HTTP_REQUEST_METHOD = "http.request.method"
_HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
_URL_SCHEME = "url.scheme"
_HTTP_METHOD = "http.method"
_HTTP_STATUS_CODE = "http.status_code"
_HTTP_SCHEME = "http.scheme"
_HTTP_TARGET = "http.target"
_HTTP_FLAVOR = "http.flavor"
_NETWORK_PROTOCOL_VERSION = "network.protocol.version"


def _compile(patterns: Iterable[str] | None) -> re.Pattern[str] | None:
    items = tuple(patterns or ())
    return re.compile("|".join(f"(?:{p})" for p in items)) if items else None


class StudyInASGIMiddleware(OpenTelemetryMiddleware):
    """The stock ASGI middleware with StudyIn's per-request rules (see the module docstring).

    ``metrics_only`` is ``True`` (every request), or regexes searched in the path: matching
    requests get the duration histogram only, no span and no user. ``user_id_hook`` is a
    callable or a ``module:function`` reference, resolved here (when the app starts: servers
    build the middleware at the first lifespan or request message); a reference that cannot be
    used is one ERROR line and no hook. ``routed_app`` is the app whose ``routes`` give route
    templates (default: ``app``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        pseudonymizer: Pseudonymizer | Callable[[], Pseudonymizer] | None = None,
        user_id_hook: UserIdHook | str | None = None,
        auth_patterns: Iterable[str] | None = None,
        excluded_urls: str | ExcludeList | None = None,
        metrics_only: bool | Iterable[str] = False,
        routed_app: Any = None,
    ) -> None:
        if excluded_urls is None:
            excluded_urls = get_excluded_urls("ASGI")
        elif isinstance(excluded_urls, str):
            excluded_urls = parse_excluded_urls(excluded_urls)
        super().__init__(
            app,
            excluded_urls=excluded_urls,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            exclude_spans=["receive", "send"],
        )
        self._pseudonymizer_source = pseudonymizer
        self._pseudonymizer: Pseudonymizer | None = (
            pseudonymizer if isinstance(pseudonymizer, Pseudonymizer) else None
        )
        self._attribution_disabled = False
        self._hook: UserIdHook | None = (
            resolve_user_id_hook(user_id_hook)
            if isinstance(user_id_hook, str)
            else user_id_hook or default_user_id_hook
        )
        self._routes = RouteResolver(app if routed_app is None else routed_app)
        self._auth = _compile(DEFAULT_AUTH_PATTERNS if auth_patterns is None else auth_patterns)
        self._metrics_only_all = metrics_only is True
        self._metrics_only = None if isinstance(metrics_only, bool) else _compile(metrics_only)
        self._new = _report_new(self._sem_conv_opt_in_mode)
        self._old = _report_old(self._sem_conv_opt_in_mode)
        self.hook_failures = 0
        self._has_exclusions = self.excluded_urls is not None and bool(
            getattr(self.excluded_urls, "_excluded_urls", True)
        )
        self._attribute_cache: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = {}
        self._deferred = DeferredDurations.for_meter(self.meter)
        self._histograms = (self.duration_histogram_new, self.duration_histogram_old)
        self._tracer_provider_for_flush = tracer_provider or trace.get_tracer_provider()
        self._meter_provider_for_flush = meter_provider or get_meter_provider()

    # --- user attribution ---------------------------------------------------------------------

    def _pseudonym(self, user_id: str | int) -> str | None:
        pseudonymizer = self._pseudonymizer
        if pseudonymizer is None:
            if self._attribution_disabled:
                return None
            try:
                source = self._pseudonymizer_source
                pseudonymizer = source() if callable(source) else Pseudonymizer.from_settings(get_settings())
            except ConfigurationError as exc:
                self._attribution_disabled = True
                _log.warning("user attribution disabled: %s", exc)
                return None
            self._pseudonymizer = pseudonymizer
        return pseudonymizer.pseudonymize(str(user_id))

    def _attribute_user(self, span: Span, scope: Scope) -> None:
        if self._hook is None:
            return
        try:
            user_id = self._hook(scope)
        except Exception as exc:  # a broken hook must not break the request, nor leak
            self.hook_failures += 1
            if self.hook_failures == 1:
                _log.warning("user_id_hook failed (%s); requests stay unattributed", type(exc).__name__)
            return
        if user_id is None or isinstance(user_id, bool) or user_id == "":
            return
        pseudonym = self._pseudonym(user_id)
        if pseudonym is not None:
            span.set_attribute(semconv.USER_HASH, pseudonym)

    # --- attributes ----------------------------------------------------------------------------

    def _request_attributes(self, scope: Scope, method: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        mode = self._sem_conv_opt_in_mode
        _set_http_method(attributes, method, sanitize_method(method), mode)
        scheme = scope.get("scheme")
        if scheme:
            _set_http_scheme(attributes, scheme, mode)
        flavor = scope.get("http_version")
        if flavor:
            _set_http_flavor_version(attributes, flavor, mode)
        return attributes

    def _metric_attributes(
        self, method: str, scope: Scope, status: int, route: str | None, error_type: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        scheme = scope.get("scheme", "http")
        flavor = scope.get("http_version")
        key = (method, scheme, flavor, status, route, error_type)
        cached = self._attribute_cache.get(key)
        if cached is not None:
            return cached
        method = sanitize_method(method) or "_OTHER"
        new: dict[str, Any] = {}
        old: dict[str, Any] = {}
        if self._new:
            new[_HTTP_REQUEST_METHOD] = method
            new[_URL_SCHEME] = scheme
            if flavor:
                new[_NETWORK_PROTOCOL_VERSION] = flavor
            if status:
                new[_HTTP_RESPONSE_STATUS_CODE] = status
            if route:
                new[semconv.HTTP_ROUTE] = route
            if error_type is None and status >= 500:
                error_type = str(status)
            if error_type is not None:
                new[semconv.ERROR_TYPE] = error_type
        if self._old:
            old[_HTTP_METHOD] = method
            old[_HTTP_SCHEME] = scheme
            if flavor:
                old[_HTTP_FLAVOR] = flavor
            if status:
                old[_HTTP_STATUS_CODE] = status
            if route:
                old[_HTTP_TARGET] = route  # where the stock middleware puts the template
        if len(self._attribute_cache) >= _ATTRIBUTE_CACHE_SIZE:  # bounded: routes x statuses
            self._attribute_cache.clear()
        self._attribute_cache[key] = (new, old)
        return new, old

    def _record_duration(
        self,
        start: float,
        method: str,
        scope: Scope,
        status: int,
        route: str,
        error_type: str | None,
        ctx: context.Context | None,
    ) -> None:
        duration_s = max(default_timer() - start, 0.0)
        new, old = self._metric_attributes(method, scope, status, route, error_type)
        if self.duration_histogram_new is not None:
            self.duration_histogram_new.record(duration_s, new, context=ctx)
        if self.duration_histogram_old is not None:
            self.duration_histogram_old.record(max(round(duration_s * 1000), 0), old, context=ctx)

    # --- the request -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _SCOPE_MARK in scope or not is_http_instrumentation_enabled():
            if scope["type"] == "lifespan" and _SCOPE_MARK not in scope:
                scope[_SCOPE_MARK] = True
                await self.app(scope, receive, self._flushing_send(send))
                return
            await self.app(scope, receive, send)
            return
        start = default_timer()
        # FastAPI's own telemetry would add a second server span carrying the raw path and
        # query; this key is how FastAPI tells a mounted app that the request is handled.
        scope.setdefault(_FASTAPI_TELEMETRY_KEY, None)
        if self._has_exclusions and self.excluded_urls.url_disabled(  # type: ignore[union-attr]
            f"{scope.get('scheme', 'http')}://{_host(scope)}{scope.get('path', '')}"
        ):
            await self.app(scope, receive, send)
            return
        scope[_SCOPE_MARK] = True
        method: str = scope.get("method", "")
        path: str = scope.get("path", "")
        if self._metrics_only_all or (self._metrics_only is not None and self._metrics_only.search(path)):
            await self._metrics_only_request(start, method, path, scope, receive, send)
        else:
            await self._traced_request(start, method, path, scope, receive, send)

    def _flushing_send(self, send: Send) -> Send:
        """Flush spans and metrics when the server shuts the app down.

        Servers such as uvicorn re-raise SIGTERM after a graceful shutdown, so the SDK's
        ``atexit`` flush never runs; the lifespan shutdown is the last reliable moment.
        """

        async def flushing_send(message: Message) -> None:
            if message.get("type") == "lifespan.shutdown.complete":
                await asyncio.to_thread(self._flush_providers)
            await send(message)

        return flushing_send

    def _flush_providers(self) -> None:
        self._deferred.flush()
        for provider in (self._tracer_provider_for_flush, self._meter_provider_for_flush):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                try:
                    flush(_SHUTDOWN_FLUSH_MILLIS)
                except Exception as exc:  # never block the shutdown
                    _log.warning("flush at shutdown failed: %s", type(exc).__name__)

    async def _metrics_only_request(
        self, start: float, method: str, path: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        entry_root_path = str(scope.get("root_path", ""))
        status = 0
        error_type: str | None = None

        async def measuring_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, measuring_send)
        except BaseException as exc:
            error_type = type(exc).__qualname__
            raise
        finally:
            duration_s = max(default_timer() - start, 0.0)
            route = self._routes.resolve(scope, entry_root_path, path)
            new, old = self._metric_attributes(method, scope, status, route, error_type)
            self._deferred.add(self._histograms, duration_s, new, old)

    async def _traced_request(
        self, start: float, method: str, path: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        attributes = self._request_attributes(scope, method)
        span_method = sanitize_method(method)
        if span_method == "_OTHER":
            span_method = "HTTP"
        # The route template is not known before routing; the raw path is never used (ids).
        span, token = _start_internal_or_server_span(  # type: ignore[no-untyped-call]
            tracer=self.tracer,
            span_name=span_method or "HTTP",
            start_time=None,
            context_carrier=scope,
            context_getter=asgi_getter,
            attributes=attributes,
        )
        request = _TracedRequest(self, span, self._auth is not None and self._auth.search(path) is not None)
        entry_root_path = str(scope.get("root_path", ""))
        status = 0
        route: str | None = None
        error_type: str | None = None
        # The span ends when the app returns (so an exception raised after the response, as
        # Starlette's ServerErrorMiddleware does, still lands on it) but is timed to the last
        # body message, like the stock middleware (background tasks are not request latency).
        response_end_ns: int | None = None

        async def traced_send(message: Message) -> None:
            nonlocal status, route, response_end_ns
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                route = self._routes.resolve(scope, entry_root_path, path)
                if span.is_recording():
                    self._name_span(span, span_method, route)
                    self._set_status(span, status)
                    if not request.anonymous and not request.attributed:
                        self._attribute_user(span, scope)
                propagator = get_global_response_propagator()  # type: ignore[no-untyped-call]
                if propagator:
                    propagator.inject(
                        message,
                        context=trace.set_span_in_context(span, context.Context()),
                        setter=asgi_setter,
                    )
                await send(message)
                return
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                response_end_ns = time.time_ns()

        request_token = _CURRENT_REQUEST.set(request)
        try:
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                await self.app(scope, receive, traced_send)
        except BaseException as exc:
            error_type = type(exc).__qualname__
            if span.is_recording():
                self._record_exception(span, error_type, responded=status != 0)
            raise
        finally:
            _CURRENT_REQUEST.reset(request_token)
            try:
                if route is None:  # no response went out: still counted, under its route
                    route = self._routes.resolve(scope, entry_root_path, path)
                    if span.is_recording():
                        self._name_span(span, span_method, route)
                self._record_duration(
                    start, method, scope, status, route, error_type, trace.set_span_in_context(span)
                )
            finally:
                if token is not None:
                    context.detach(token)
                span.end(end_time=response_end_ns)

    def _record_exception(self, span: Span, error_type: str, *, responded: bool) -> None:
        if not responded and getattr(span, "kind", None) == SpanKind.SERVER:
            self._set_status(span, 500)  # no response went out: the client sees a 500 from the server
        span.set_attribute(semconv.ERROR_TYPE, error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
        # Type only: messages and stack traces may hold ids or e-mails (privacy rule).
        span.add_event(
            semconv.EXCEPTION_EVENT, {semconv.EXCEPTION_TYPE: error_type, semconv.EXCEPTION_ESCAPED: True}
        )

    @staticmethod
    def _name_span(span: Span, span_method: str, route: str) -> None:
        span.set_attribute(semconv.HTTP_ROUTE, route)
        if route != semconv.UNMATCHED_ROUTE:  # unmatched: the name stays METHOD (HTTP conventions)
            span.update_name(f"{span_method} {route}")

    def _set_status(self, span: Span, status: int) -> None:
        if self._old:
            span.set_attribute(_HTTP_STATUS_CODE, status)
        if self._new:
            span.set_attribute(_HTTP_RESPONSE_STATUS_CODE, status)
        code = http_status_to_status_code(status, server_span=True)
        if code is StatusCode.ERROR:
            span.set_attribute(semconv.ERROR_TYPE, str(status))
            span.set_status(Status(StatusCode.ERROR))


class _TracedRequest:
    """The request a span measures, as :func:`~.attribution.set_user` finds it (context variable)."""

    __slots__ = ("anonymous", "attributed", "middleware", "span")

    def __init__(self, middleware: StudyInASGIMiddleware, span: Span, anonymous: bool) -> None:
        self.middleware = middleware
        self.span = span
        self.anonymous = anonymous
        self.attributed = False

    def attribute(self, user_id: str | int) -> bool:
        if self.anonymous:  # authentication paths are never attributed
            return False
        pseudonym = self.middleware._pseudonym(user_id)
        if pseudonym is None:
            return False
        self.attributed = True  # the hook does not run: the app's explicit call wins
        if self.span.is_recording():
            self.span.set_attribute(semconv.USER_HASH, pseudonym)
        return True


_CURRENT_REQUEST = current_request_slot()


class DeferredDurations:
    """Metrics-only requests hand their duration here; it reaches the histogram at collection.

    A request appends its duration and attribute set to a deque (well under a microsecond);
    the values are recorded into the stock duration histograms, every one of them (exact counts
    and sums, no sampling), by the callback of an observable gauge, which the SDK runs at each
    collection just before it reads the histograms, and at shutdown. The SDK's per-measurement
    cost (attribute hashing and aggregation, most of a metrics-only request's overhead) thus
    runs in the metric reader's thread instead of the request. The gauge reports how many
    durations each collection recorded. Bounded: past ``max_pending`` values, the request that
    overflows records them itself. One per meter (the SDK registers a gauge name once per
    meter), shared by every middleware using that meter.
    """

    GAUGE = "studyin.http.server.deferred_durations"

    def __init__(self, meter: Any, max_pending: int = 100_000) -> None:
        self._pending: deque[tuple[Any, Any, float, dict[str, Any], dict[str, Any]]] = deque()
        self.max_pending = max_pending
        meter.create_observable_gauge(
            self.GAUGE,
            callbacks=[self._on_collect],
            unit="{request}",
            description="Metrics-only request durations recorded at this collection",
        )

    @classmethod
    def for_meter(cls, meter: Any) -> DeferredDurations:
        with _DEFERRED_LOCK:
            entry = _DEFERRED.get(id(meter))
            if entry is None or entry[0] is not meter:
                entry = _DEFERRED[id(meter)] = (meter, cls(meter))
            return entry[1]

    def add(
        self, histograms: tuple[Any, Any], duration_s: float, new: dict[str, Any], old: dict[str, Any]
    ) -> None:
        self._pending.append((histograms[0], histograms[1], duration_s, new, old))
        if len(self._pending) > self.max_pending:
            self.flush()

    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Record every pending duration (safe from any thread, concurrent with ``add``)."""
        pending = self._pending
        count = 0
        while True:
            try:
                histogram_new, histogram_old, duration_s, new, old = pending.popleft()
            except IndexError:
                return count
            if histogram_new is not None:
                histogram_new.record(duration_s, new)
            if histogram_old is not None:
                histogram_old.record(max(round(duration_s * 1000), 0), old)
            count += 1

    def _on_collect(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.flush())]


_DEFERRED: dict[int, tuple[Any, DeferredDurations]] = {}
_DEFERRED_LOCK = threading.Lock()


def _host(scope: Scope) -> str:
    for key, value in scope.get("headers") or ():
        if key == b"host":
            return str(value.decode("latin-1"))
    server = scope.get("server") or ("0.0.0.0", 80)
    return f"{server[0]}:{server[1]}" if server[1] not in (80, None) else str(server[0])


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
) -> Any:
    """Instrument ``app`` for StudyIn telemetry and return it.

    A Starlette/FastAPI app is instrumented in place (its middleware stack is wrapped when
    built, like ``FastAPIInstrumentor.instrument_app``) and returned, so it stays a FastAPI
    object; any other ASGI callable is returned wrapped. Unset options come from ``settings``
    (default: the environment): ``STUDYIN_ANALYTICS_AUTH_PATHS``, ``_METRICS_ONLY_PATHS``,
    ``_USER_ID_HOOK``. Excluded URLs default to ``OTEL_PYTHON_ASGI_EXCLUDED_URLS`` (then
    ``OTEL_PYTHON_EXCLUDED_URLS``).
    """
    effective = settings if settings is not None else _env_settings()
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


def _env_settings() -> Settings | None:
    try:
        return get_settings()
    except Exception as exc:  # unusable environment: fall back to defaults, say why (no values)
        _log.warning("STUDYIN_ANALYTICS_* settings unusable (%s); using defaults", type(exc).__name__)
        return None
