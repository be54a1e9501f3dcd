"""StudyIn's ASGI middleware: the per-request path (see :mod:`.asgi` for the rules it follows)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from timeit import default_timer
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY, _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation._semconv import _report_new, _report_old
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware, asgi_setter
from opentelemetry.instrumentation.propagators import get_global_response_propagator
from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY_PLAIN
from opentelemetry.metrics import MeterProvider, get_meter_provider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.http import ExcludeList, get_excluded_urls, parse_excluded_urls

from . import semconv
from .asgi_types import ASGIApp, Message, Receive, Scope, Send
from .attribution import UserIdHook, current_request_slot, default_user_id_hook, resolve_user_id_hook
from .clock import Clock
from .deferred import DeferredDurations
from .http_attributes import HttpAttributes, sampler_reads_attributes
from .privacy import Pseudonymizer
from .propagation import extract_parent
from .routes import RouteResolver
from .settings import ConfigurationError, get_settings
from .span_writes import write_clean

__all__ = ["DEFAULT_AUTH_PATTERNS", "SCOPE_MARK", "StudyInASGIMiddleware"]

_log = logging.getLogger(__name__)

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

SCOPE_MARK = "studyin_analytics.instrumented"
"""Set in the scope by the outermost StudyIn middleware, so nested apps are not measured twice."""
_SHUTDOWN_FLUSH_MILLIS = 5000
_FASTAPI_TELEMETRY_KEY = "fastapi.telemetry"


def _compile(patterns: Iterable[str] | None) -> re.Pattern[str] | None:
    items = tuple(patterns or ())
    return re.compile("|".join(f"(?:{p})" for p in items)) if items else None


class StudyInASGIMiddleware(HttpAttributes, OpenTelemetryMiddleware):
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
        clock: Clock | None = None,
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
        self._clock = clock
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
        self._start_cache: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}
        self._response_cache: dict[tuple[int, str], tuple[dict[str, Any], bool]] = {}
        self._deferred = DeferredDurations.for_meter(self.meter)
        self._attributes_at_response = not sampler_reads_attributes(getattr(self.tracer, "sampler", None))
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

    def _user_pseudonym(self, scope: Scope) -> str | None:
        """The pseudonym of the user the hook finds in the scope, if any."""
        if self._hook is None:
            return None
        try:
            user_id = self._hook(scope)
        except Exception as exc:  # a broken hook must not break the request, nor leak
            self.hook_failures += 1
            if self.hook_failures == 1:
                _log.warning("user_id_hook failed (%s); requests stay unattributed", type(exc).__name__)
            return None
        if user_id is None or isinstance(user_id, bool) or user_id == "":
            return None
        return self._pseudonym(user_id)

    # --- the request -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        current = context.get_current()  # is_http_instrumentation_enabled's keys, read from one context
        if (
            scope["type"] != "http"
            or SCOPE_MARK in scope
            or current.get(_SUPPRESS_INSTRUMENTATION_KEY)
            or current.get(_SUPPRESS_INSTRUMENTATION_KEY_PLAIN)
            or current.get(_SUPPRESS_HTTP_INSTRUMENTATION_KEY)
        ):
            if scope["type"] == "lifespan" and SCOPE_MARK not in scope:
                scope[SCOPE_MARK] = True
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
        scope[SCOPE_MARK] = True
        method: str = scope.get("method", "")
        path: str = scope.get("path", "")
        if self._metrics_only_all or (self._metrics_only is not None and self._metrics_only.search(path)):
            await self._metrics_only_request(start, method, path, scope, receive, send)
        else:
            await self._traced_request(start, method, path, scope, receive, send, current)

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
        self,
        start: float,
        method: str,
        path: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        parent: context.Context,
    ) -> None:
        attributes, span_method = self._start_attributes(scope, method)
        # What the stock _start_internal_or_server_span does, with one context attach instead
        # of two (extracted parent, then the span) and a header scan that decodes only matches.
        if trace.get_current_span(parent) is trace.INVALID_SPAN:
            parent = extract_parent(scope, parent)
            kind = SpanKind.SERVER
        else:
            kind = SpanKind.INTERNAL
        # The route template is not known before routing; the raw path is never used (ids).
        at_response = self._attributes_at_response  # the sampler does not read them: set them later
        span = self.tracer.start_span(
            span_method,
            context=parent,
            kind=kind,
            attributes=None if at_response else attributes,
            start_time=None if self._clock is None else self._clock.time_ns(),
        )
        anonymous = self._auth is not None and self._auth.search(path) is not None
        request = _TracedRequest(self, span, anonymous, scope, send, path, span_method)
        request.start_attributes = attributes if at_response else None
        span_context = trace.set_span_in_context(span, parent)
        token = context.attach(span_context)
        request_token = _CURRENT_REQUEST.set(request)
        error_type: str | None = None
        try:
            await self.app(scope, receive, request.send)
        except BaseException as exc:
            error_type = type(exc).__qualname__
            if span.is_recording():
                self._record_exception(span, error_type, responded=request.status != 0)
            raise
        finally:
            _CURRENT_REQUEST.reset(request_token)
            try:
                route = request.route
                if route is None:  # no response went out: still counted, under its route
                    route = self._routes.resolve(scope, request.entry_root_path, path)
                    if span.is_recording():
                        if request.start_attributes is not None:
                            span.set_attributes(request.start_attributes)
                        self._name_span(span, span_method, route)
                # Recorded at collection, as in metrics-only mode: the SDK's histogram recording
                # was a third of this request path (docs/instrumentation.md).
                duration_s = max(default_timer() - start, 0.0)
                new, old = self._metric_attributes(method, scope, request.status, route, error_type)
                self._deferred.add(self._histograms, duration_s, new, old, span.get_span_context())
            finally:
                context.detach(token)
                response_end_ns = request.response_end_ns
                if response_end_ns is None and self._clock is not None:
                    response_end_ns = self._clock.time_ns()
                span.end(end_time=response_end_ns)

    def _on_response_start(self, request: _TracedRequest, message: Message) -> None:
        """Status, route, span name and user, set in one call when the response starts."""
        status = request.status = message["status"]
        route = request.route = self._routes.resolve(request.scope, request.entry_root_path, request.path)
        span = request.span
        if span.is_recording():
            attributes, failed = self._response_attributes(status, route)
            pseudonym = (
                None if request.anonymous or request.attributed else self._user_pseudonym(request.scope)
            )
            # unmatched: the name stays METHOD (HTTP conventions)
            name = None if route == semconv.UNMATCHED_ROUTE else f"{request.span_method} {route}"
            write_clean(span, request.start_attributes, attributes, pseudonym, name)
            request.start_attributes = None
            if failed:
                span.set_status(Status(StatusCode.ERROR))
        propagator = get_global_response_propagator()  # type: ignore[no-untyped-call]
        if propagator:
            propagator.inject(
                message, context=trace.set_span_in_context(span, context.Context()), setter=asgi_setter
            )


class _TracedRequest:
    """The request a span measures: its state, the ``send`` the app calls, and what
    :func:`~.attribution.set_user` finds (context variable). A bound method, not a closure per
    request."""

    __slots__ = (
        "anonymous",
        "attributed",
        "downstream",
        "entry_root_path",
        "middleware",
        "path",
        "response_end_ns",
        "route",
        "scope",
        "span",
        "span_method",
        "start_attributes",
        "status",
    )

    def __init__(
        self,
        middleware: StudyInASGIMiddleware,
        span: Span,
        anonymous: bool,
        scope: Scope,
        downstream: Send,
        path: str,
        span_method: str,
    ) -> None:
        self.middleware = middleware
        self.span = span
        self.anonymous = anonymous
        self.attributed = False
        self.scope = scope
        self.downstream = downstream
        self.path = path
        self.span_method = span_method
        # root_path as the request entered: mounts change it in the scope (see .routes)
        self.entry_root_path = str(scope.get("root_path", ""))
        self.status = 0
        self.start_attributes: dict[str, Any] | None = None  # set with the response's (see the middleware)
        self.route: str | None = None
        # The span ends when the app returns (so an exception raised after the response, as
        # Starlette's ServerErrorMiddleware does, still lands on it) but is timed to the last
        # body message, like the stock middleware (background tasks are not request latency).
        self.response_end_ns: int | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.middleware._on_response_start(self, message)
            await self.downstream(message)
            return
        await self.downstream(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            clock = self.middleware._clock
            self.response_end_ns = time.time_ns() if clock is None else clock.time_ns()

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


def _host(scope: Scope) -> str:
    for key, value in scope.get("headers") or ():
        if key == b"host":
            return str(value.decode("latin-1"))
    server = scope.get("server") or ("0.0.0.0", 80)
    return f"{server[0]}:{server[1]}" if server[1] not in (80, None) else str(server[0])
