"""The request's parent context from its headers, with the least work the configured propagator allows.

The stock path (``opentelemetry.propagate.extract`` with the ASGI getter) decodes every header name
for every key a propagator asks for. Here the getter decodes only matching headers, and with the
default W3C propagators (``tracecontext``, ``baggage``: they read only the headers they name) a
request carrying none of those headers skips extraction: the result would be the context as it is.
Another propagator is always asked.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.instrumentation.asgi import ASGIGetter
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .asgi_types import Scope

__all__ = ["SCOPE_HEADERS", "ScopeHeaderGetter", "extract_parent"]

_W3C = (TraceContextTextMapPropagator, W3CBaggagePropagator)


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except ValueError:  # as the stock getter does (ASGI's encoding rules)
        return value.decode("unicode_escape")


class ScopeHeaderGetter(ASGIGetter):
    """The stock ASGI getter, decoding only the headers that match. Header names are ASCII
    tokens, so ``bytes.lower`` finds what the stock getter's decode-then-lower finds."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        headers = carrier.get("headers")
        if not headers:
            return None
        wanted = key.lower().encode("utf-8")
        found = [_decode(value) for name, value in headers if name == wanted or name.lower() == wanted]
        return found or None


SCOPE_HEADERS = ScopeHeaderGetter()


def _w3c_keys(propagator: TextMapPropagator) -> frozenset[bytes] | None:
    """The header names a W3C-only propagator reads; ``None`` for any other propagator."""
    parts = (
        getattr(propagator, "_propagators", None) if type(propagator) is CompositePropagator else [propagator]
    )
    if not parts or any(type(part) not in _W3C for part in parts):
        return None
    return frozenset(field.encode("ascii") for field in propagator.fields)


class _Keys:
    """The global propagator last seen and its keys (it may be replaced at run time)."""

    propagator: TextMapPropagator | None = None
    keys: frozenset[bytes] | None = None


def extract_parent(scope: Scope, parent: Context) -> Context:
    """``parent`` with what the request's headers propagate (``opentelemetry.propagate.extract``)."""
    propagator = get_global_textmap()
    if propagator is not _Keys.propagator:
        _Keys.keys = _w3c_keys(propagator)
        _Keys.propagator = propagator
    keys = _Keys.keys
    if keys is not None:
        for name, _value in scope.get("headers") or ():
            if name.lower() in keys:
                break
        else:
            return parent
    return propagator.extract(scope, context=parent, getter=SCOPE_HEADERS)  # type: ignore[misc]  # Scope vs the getter's dict
