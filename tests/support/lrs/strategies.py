"""Hypothesis strategies for valid learning events of every mapped type, read from the event models' own
JSON schemas (a new field or limit is picked up without editing this file)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from studyin_analytics.aggregator.lrs.xapi import MAPPED_EVENT_TYPES
from studyin_analytics.instrumentation import events


def _value(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "$ref" in schema:
        return st.sampled_from(defs[schema["$ref"].rsplit("/", 1)[-1]]["enum"])
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return st.none() | _value(options[0], defs)
    kind = schema.get("type")
    if schema.get("format") == "uuid":
        return st.uuids()
    if kind == "string":
        return st.from_regex(schema["pattern"], fullmatch=True)
    if kind == "array":
        return st.lists(_value(schema["items"], defs), max_size=min(schema.get("maxItems", 5), 5)).map(tuple)
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind == "integer":
        return st.integers(min_value=low, max_value=high)
    assert kind == "number", schema
    return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)


def fields_of(model: type[events.DomainEvent]) -> st.SearchStrategy[dict[str, Any]]:
    """Any valid field values of ``model`` (optional fields sometimes left out)."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", ()))
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for name, prop in schema["properties"].items():
        value = _value(prop, defs)
        parts[name] = value if name in required else st.none() | value
    return st.fixed_dictionaries(parts).map(lambda d: {k: v for k, v in d.items() if v is not None})


learning_events: st.SearchStrategy[tuple[type[events.DomainEvent], dict[str, Any]]] = st.sampled_from(
    sorted(MAPPED_EVENT_TYPES)
).flatmap(lambda name: st.tuples(st.just(events.EVENT_TYPES[name]), fields_of(events.EVENT_TYPES[name])))
"""(model, fields) of any learning event type, with any valid contents."""
