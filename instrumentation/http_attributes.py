"""The HTTP attributes of the server span and of the duration histograms (stable and legacy names).

:class:`HttpAttributes` is a mixin of :class:`~.middleware.StudyInASGIMiddleware` (methods, not
functions: the per-request calls cost what they did before the split).
"""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation._semconv import (
    _set_http_flavor_version,
    _set_http_method,
    _set_http_scheme,
)
from opentelemetry.instrumentation.utils import http_status_to_status_code
from opentelemetry.sdk.trace.sampling import ParentBased, StaticSampler, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.http import sanitize_method

from . import semconv
from .asgi_types import Scope
from .span_writes import clean_once

__all__ = ["ATTRIBUTE_CACHE_SIZE", "HttpAttributes", "sampler_reads_attributes"]

ATTRIBUTE_CACHE_SIZE = 4096
"""Metric attribute sets kept per middleware (routes x statuses x methods), cleared when full."""

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


_BLIND_SAMPLING = (StaticSampler.should_sample, TraceIdRatioBased.should_sample)
_PARENT_BASED_DELEGATES = (
    "_root",
    "_remote_parent_sampled",
    "_remote_parent_not_sampled",
    "_local_parent_sampled",
    "_local_parent_not_sampled",
)


def sampler_reads_attributes(sampler: object) -> bool:
    """Whether ``sampler`` may decide on the attributes a span starts with. The SDK's always-on/off,
    ratio and parent-based samplers do not (their ``should_sample``, not a subclass's); then the
    middleware sets the request attributes with the response's, in one call (one cleaning pass of the
    SDK instead of two). Anything else, or a tracer without a ``sampler``, gets them at start."""
    method = getattr(type(sampler), "should_sample", None)
    if method in _BLIND_SAMPLING:
        return False
    if method is ParentBased.should_sample:
        return any(sampler_reads_attributes(getattr(sampler, name, None)) for name in _PARENT_BASED_DELEGATES)
    return True


class HttpAttributes:
    """Span and metric attributes of a request; state set by the middleware's ``__init__``."""

    _sem_conv_opt_in_mode: Any
    _new: bool
    _old: bool
    _attribute_cache: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]]
    _start_cache: dict[tuple[Any, ...], tuple[dict[str, Any], str]]
    _response_cache: dict[tuple[int, str], tuple[dict[str, Any], bool]]
    duration_histogram_new: Any
    duration_histogram_old: Any

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

    def _start_attributes(self, scope: Scope, method: str) -> tuple[dict[str, Any], str]:
        """The span's attributes at start and its name before routing, cached per method, scheme and
        version (the SDK copies the attributes: the cached dict is never changed), cleaned as the SDK
        cleans them (:func:`~.span_writes.clean_once`)."""
        key = (method, scope.get("scheme"), scope.get("http_version"))
        cached = self._start_cache.get(key)
        if cached is None:
            span_method = sanitize_method(method)
            if span_method == "_OTHER":
                span_method = "HTTP"
            if len(self._start_cache) >= ATTRIBUTE_CACHE_SIZE:  # methods come from clients: bounded
                self._start_cache.clear()
            attributes = clean_once(self._request_attributes(scope, method))
            cached = self._start_cache[key] = (attributes, span_method or "HTTP")
        return cached

    def _response_attributes(self, status: int, route: str) -> tuple[dict[str, Any], bool]:
        """The attributes the span gets when the response starts (route, status, ``error.type`` of a
        5xx), and whether its status is an error; cached per status and route, cleaned as the SDK cleans
        them (:func:`~.span_writes.clean_once`)."""
        key = (status, route)
        cached = self._response_cache.get(key)
        if cached is None:
            attributes: dict[str, Any] = {semconv.HTTP_ROUTE: route}
            if self._old:
                attributes[_HTTP_STATUS_CODE] = status
            if self._new:
                attributes[_HTTP_RESPONSE_STATUS_CODE] = status
            failed = http_status_to_status_code(status, server_span=True) is StatusCode.ERROR
            if failed:
                attributes[semconv.ERROR_TYPE] = str(status)
            if len(self._response_cache) >= ATTRIBUTE_CACHE_SIZE:  # bounded: routes x statuses
                self._response_cache.clear()
            cached = self._response_cache[key] = (clean_once(attributes), failed)
        return cached

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
        if len(self._attribute_cache) >= ATTRIBUTE_CACHE_SIZE:  # bounded: routes x statuses
            self._attribute_cache.clear()
        self._attribute_cache[key] = (new, old)
        return new, old

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
