"""Span events whose attributes are known clean, recorded without the SDK checking every value again.

``Span.add_event`` wraps its attributes in a new ``BoundedAttributes``, which calls a Python function per
attribute to check and copy its value: about 40% of an ``add_event`` with an exposure's five attributes
(profiled: ``bench --only experiments``). The tracker's own lifecycle events and experiment exposures carry
values it built itself: strings, ints, floats, bools and tuples of strings, already what the SDK keeps. It
hands them over as :class:`KnownClean` (a plain dict marked so), and the carriers record them with
:func:`add_event`: on an SDK span exactly what ``span.add_event`` records (name, timestamp, attributes,
limits), without the second pass; any other attributes, any other span, a span class that overrides
``add_event``, or limits that would change a value (a string length limit, fewer attributes allowed than
given) take ``span.add_event`` as before.

It reads two SDK internals (``Span._limits``, ``Span._add_event``), as the exporter reads ``_dict`` and
``_events``: the SDK is pinned to a minor version, and a property test holds the result equal to
``add_event``'s (tests/instrumentation/test_span_events.py).
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.trace import Span

__all__ = ["CleanAttributes", "KnownClean", "add_event"]

_SDK_ADD_EVENT = SdkSpan.add_event


class KnownClean(dict[str, Any]):
    """Attributes whose values are str, bool, int, float or tuples of those (no lists, no ``None``), built
    by the tracker itself; handed over to the carrier (the caller keeps no reference)."""

    __slots__ = ()


class CleanAttributes(BoundedAttributes):
    """An immutable ``BoundedAttributes`` over a dict of clean values, taken as it is (no copy, no checks).
    What never changes on an immutable one is set on the class: nothing drops, nothing is cut, and the lock
    (which an immutable one takes only to be deep-copied) is shared."""

    dropped = 0
    max_value_len = None
    _immutable = True
    _lock = threading.Lock()

    def __init__(self, attributes: dict[str, Any], maxlen: int | None) -> None:  # no super(): no cleaning
        self._dict = attributes
        self.maxlen = maxlen


def add_event(span: Span, name: str, attributes: dict[str, Any], timestamp: int | None = None) -> None:
    """``span.add_event(name, attributes, timestamp=timestamp)``; :class:`KnownClean` attributes on an SDK
    span skip the SDK's second cleaning pass (module docstring)."""
    if type(attributes) is KnownClean and type(span).add_event is _SDK_ADD_EVENT:
        limits = span._limits  # type: ignore[attr-defined]
        maxlen = limits.max_event_attributes
        if limits.max_attribute_length is None and (maxlen is None or len(attributes) <= maxlen):
            event = Event(name, CleanAttributes(attributes, maxlen), timestamp)
            span._add_event(event)  # type: ignore[attr-defined]  # the SDK's own: lock, ended check, limit
            return
    span.add_event(name, attributes, timestamp=timestamp)
