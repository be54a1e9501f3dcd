"""Attributes and names written onto the SDK's request span without the SDK's per-value cleaning.

``Span.set_attributes`` runs every value through ``BoundedAttributes``' cleaning (type checks, an
``isinstance(..., Mapping)`` on the whole mapping, a lock per call, a second pass per key): about
8 µs of CPU for the 7 attributes of a request span here, an eighth of the middleware's overhead.
The middleware's attribute sets are built once per method/scheme/version and per status/route
and cached; :func:`clean_once` puts them through that same cleaning when they are built, so what
reaches the span is what the SDK would have kept. :func:`write_clean` then adds them to the span's
attribute dict directly, under the span's lock, and only where the outcome is the same as the
SDK's own calls:

* the span is an SDK ``Span`` whose ``set_attributes`` and ``update_name`` are the SDK's (not a
  subclass's), holding a plain ``BoundedAttributes``;
* no attribute value length limit (``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``,
  ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``): the SDK would truncate per span;
* the attribute count limit leaves room for all of them (else the SDK evicts the oldest);
* the span has not ended.

Anything else goes through the public calls. The pseudonym (``user.hash``) is a string made by
:class:`~.privacy.Pseudonymizer`, clean by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.trace import Span

from .semconv import USER_HASH

__all__ = ["clean_once", "write_clean"]

_DIRECT_TYPES: dict[type, bool] = {}
"""Span types seen, and whether their attributes may be written directly (a few types per process)."""


def clean_once(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """``attributes`` as the SDK's attribute cleaning leaves them (without a value length limit)."""
    return BoundedAttributes(attributes=attributes, immutable=False).copy()  # type: ignore[return-value]


def _direct(span_type: type) -> bool:
    known = _DIRECT_TYPES.get(span_type)
    if known is None:
        known = (
            issubclass(span_type, SdkSpan)
            and getattr(span_type, "set_attributes", None) is SdkSpan.set_attributes
            and getattr(span_type, "update_name", None) is SdkSpan.update_name
        )
        if len(_DIRECT_TYPES) < 64:
            _DIRECT_TYPES[span_type] = known
    return known


def write_clean(
    span: Span,
    first: Mapping[str, Any] | None,
    second: Mapping[str, Any],
    pseudonym: str | None,
    name: str | None,
) -> None:
    """``span.set_attributes({**first, **second, user.hash: pseudonym})`` then ``span.update_name(name)``
    (``None``: not set), for attribute sets made by :func:`clean_once`."""
    if _direct(type(span)):
        sdk_span: Any = span
        bounded = sdk_span._attributes
        if type(bounded) is BoundedAttributes and bounded.max_value_len is None and not bounded._immutable:
            stored = bounded._dict
            room = bounded.maxlen
            adding = len(second) + (0 if first is None else len(first)) + (pseudonym is not None)
            if room is None or len(stored) + adding <= room:
                with sdk_span._lock:
                    if sdk_span._end_time is None:
                        if first is not None:
                            stored.update(first)
                        stored.update(second)
                        if pseudonym is not None:
                            stored[USER_HASH] = pseudonym
                        if name is not None:
                            sdk_span._name = name
                        return
    attributes = {**first, **second} if first is not None else dict(second)
    if pseudonym is not None:
        attributes[USER_HASH] = pseudonym
    span.set_attributes(attributes)
    if name is not None:
        span.update_name(name)
