"""Hypothesis strategies for the privacy tests: OTLP ``AnyValue`` trees with planted identities.

A :class:`Case` is one span's worth of values (name, attributes, one event, resource) built
from every type ``AnyValue`` can express (strings, ints, doubles, bools, bytes, arrays, kvlists)
nested to any depth, with identities planted where careless code puts them:

* raw user ids under identity keys (``user.id``, ``enduser.id``... and ``user.hash``), as a
  string, inside an array or a kvlist, or as bytes, in kvlists at any depth;
* e-mail addresses, ASCII and internationalized (non-ASCII local parts, IDN domains written
  with any script and with the ideographic full stops IDNA reads as dots), inside strings,
  inside bytes (UTF-8 and UTF-16), as array items, as kvlist keys and in span and event names.

:func:`survivors` lists what is still there in what left (:func:`texts` finds every string and
bytes value in decoded structures and protobuf messages; bytes are searched for UTF-8 and UTF-16).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from studyin_analytics.instrumentation import semconv
from studyin_analytics.instrumentation.privacy import DROPPED_ATTRIBUTES, IDENTITY_ATTRIBUTES

TEXT = st.characters(exclude_categories=("Cs",))
"""Any character protobuf and msgpack accept (lone surrogates are not valid UTF-8)."""
ADDRESS_CHARS = st.characters(categories=("L", "M", "N"))
"""Letters, marks and digits of every script: what internationalized addresses are made of."""

IDENTITY_KEYS = sorted(IDENTITY_ATTRIBUTES | {semconv.USER_HASH})
KEYS = sorted(
    {
        *IDENTITY_ATTRIBUTES,
        *sorted(DROPPED_ATTRIBUTES)[:6],
        "http.request.header.x_user",
        "url.full",
        "url.path",
        "http.route",
        "studyin.material.id",
        "studyin.xp.amount",
        "studyin.ai.latency_ms",
        "studyin.session.materials_touched",
        "studyin.not_declared",
        "note",
        "app.context",
        semconv.USER_HASH,
    }
)
"""Keys whose rules differ: identity, dropped, URL, declared (each type), undeclared, plain."""


def ascii_emails() -> st.SearchStrategy[str]:
    return st.from_regex(
        r"[A-Za-z0-9][A-Za-z0-9._+-]{0,15}@[a-z0-9][a-z0-9-]{0,10}(\.[a-z]{2,8}){1,2}", fullmatch=True
    )


@st.composite
def idn_emails(draw: st.DrawFn) -> str:
    local = draw(st.text(st.one_of(ADDRESS_CHARS, st.sampled_from("._+-")), min_size=1, max_size=16))
    labels = draw(
        st.lists(
            st.text(st.one_of(ADDRESS_CHARS, st.just("-")), min_size=1, max_size=10), min_size=2, max_size=3
        )
    )
    domain = labels[0]
    for label in labels[1:]:
        domain += draw(st.sampled_from([".", "\u3002", "\uff0e", "\uff61"])) + label
    return f"{local}@{domain}"


def raw_ids() -> st.SearchStrategy[str]:
    return st.from_regex(r"rawid-[0-9a-f]{12}", fullmatch=True)


@dataclass
class Case:
    emails: list[str]
    ids: list[str]
    name: str
    attributes: dict[str, Any]
    event_name: str
    event_attributes: dict[str, Any]
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def planted(self) -> list[str]:
        return [*self.emails, *self.ids]


def planted_text(emails: list[str]) -> st.SearchStrategy[str]:
    """An e-mail with arbitrary text around it."""
    return st.tuples(st.text(TEXT, max_size=6), st.sampled_from(emails), st.text(TEXT, max_size=6)).map(
        "".join
    )


def _leaves(emails: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(TEXT, max_size=10),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.binary(max_size=10),
        planted_text(emails),
        planted_text(emails).map(lambda text: text.encode("utf-8")),
        planted_text(emails).map(lambda text: text.encode("utf-16-le")),
    )


def _identity_values(ids: list[str]) -> st.SearchStrategy[Any]:
    raw = st.sampled_from(ids)
    return st.one_of(
        raw,
        raw.map(lambda value: [value]),
        raw.map(lambda value: {"id": value}),
        raw.map(str.encode),
    )


def _keys(emails: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(KEYS), st.text(TEXT, min_size=1, max_size=10), planted_text(emails))


def kvlists(children: st.SearchStrategy[Any], emails: list[str], ids: list[str]) -> st.SearchStrategy[Any]:
    """A kvlist of ``children``, often with raw ids planted under identity keys."""
    plain = st.dictionaries(_keys(emails), children, max_size=4)
    identity = st.dictionaries(st.sampled_from(IDENTITY_KEYS), _identity_values(ids), max_size=2)
    return st.builds(lambda a, b: {**a, **b}, plain, identity)


def trees(emails: list[str], ids: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        _leaves(emails),
        lambda children: st.one_of(st.lists(children, max_size=4), kvlists(children, emails, ids)),
        max_leaves=10,
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    emails = draw(st.lists(st.one_of(ascii_emails(), idn_emails()), min_size=1, max_size=3, unique=True))
    ids = draw(st.lists(raw_ids(), min_size=1, max_size=2, unique=True))
    values = trees(emails, ids)
    return Case(
        emails=emails,
        ids=ids,
        name=draw(st.one_of(st.text(TEXT, max_size=10), planted_text(emails))),
        attributes=draw(kvlists(values, emails, ids)),
        event_name=draw(st.one_of(st.just("studyin.material_view"), planted_text(emails))),
        event_attributes=draw(kvlists(values, emails, ids)),
        resource=draw(kvlists(_leaves(emails), emails, ids)),
    )


def texts(value: Any) -> Iterable[str | bytes]:
    """Every string and bytes value inside ``value``: nested dicts (keys too), lists, tuples and
    named tuples, and protobuf messages (every set field, recursively)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif hasattr(item, "ListFields"):  # a protobuf message
            for descriptor, field_value in item.ListFields():
                is_repeated = getattr(descriptor, "is_repeated", None)
                repeated = (
                    is_repeated if is_repeated is not None else descriptor.label == descriptor.LABEL_REPEATED
                )
                stack.extend(field_value if repeated else [field_value])


def survivors(values: Iterable[str | bytes], planted: Iterable[str]) -> list[str]:
    """The planted strings found in any of ``values`` (inside a string, or inside bytes spelled
    in UTF-8 or UTF-16). Each value is searched on its own: searching the raw bytes of an
    encoding would also find a near miss (``a@b.`` kept, as it is no address) run together
    with the next field's tag byte."""
    items = list(planted)
    found = []
    for value in values:
        for item in items:
            if isinstance(value, str):
                hit = item in value
            else:
                hit = item.encode("utf-8") in value or item.encode("utf-16-le") in value
            if hit and item not in found:
                found.append(item)
    return found


def walk(value: Any) -> Iterable[tuple[Any, int]]:
    """Every value and mapping key inside ``value``, with its depth (1 = an attribute value)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        yield item, depth
        if isinstance(item, dict):
            for key, child in item.items():
                yield key, depth
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
