"""The privacy guard on every value OTLP ``AnyValue`` can express, without servers.

Nested kvlists, arrays of arrays, bytes, internationalized and percent-encoded addresses,
declared ``studyin.*`` attributes of the wrong type; property-based over arbitrary trees with
planted identities (:mod:`.planted`), in process and through :class:`GuardedSpanExporter` into
OTLP protobuf. The same properties against real Redis (the exporter and the gateway) are in
``tests/system/test_privacy_paths.py``.
"""

from __future__ import annotations

import unicodedata
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from studyin_analytics.instrumentation import (
    GuardedSpanExporter,
    PrivacyGuard,
    Pseudonymizer,
    events,
    semconv,
)
from studyin_analytics.instrumentation.emails import EMAIL_PLACEHOLDER, scrub_emails
from studyin_analytics.instrumentation.privacy import MAX_VALUE_DEPTH, is_pseudonym
from tests.support.planted import TEXT, Case, ascii_emails, cases, idn_emails, survivors, texts, walk

PSEUDONYMIZER = Pseudonymizer({"k1": b"a" * 20}, "k1")
RAW_ID = "canary-4711-raw"
EMAIL = "canary.person@hospital.example"

INTERNATIONAL_ADDRESSES = [
    "jörg.müller@bücher.example",  # German umlauts, IDN domain
    "josé@correo.españa",  # non-ASCII TLD
    "用户@例子.广告",  # Chinese
    "用户@例子。广告",  # ideographic full stop as the dot (IDNA reads it as one)
    "ユーザー@例え．テスト",  # fullwidth full stop
    "संपर्क@डाटामेल.भारत",  # Devanagari: vowel signs and viramas are marks, not letters
    "δοκιμή@παράδειγμα.δοκιμή",  # Greek
    "пользователь@пример.рф",  # Cyrillic
    "θσερ@xn--hxajbheg2az3al.xn--jxalpdlp",  # punycode (A-label) domain
    unicodedata.normalize("NFD", "zoë.brontë@exämple.org"),  # decomposed: combining diaeresis
    "Dörte+tag@sub.münchen.de",
]


def guard() -> PrivacyGuard:
    return PrivacyGuard(PSEUDONYMIZER)


# --- the cases the issue found ------------------------------------------------------------------


def test_nested_kvlists_follow_the_top_level_rules() -> None:
    g = guard()
    cleaned = g.clean(
        {
            "app.context": {
                "user.id": RAW_ID,
                "user.email": EMAIL,
                "client.address": "198.51.100.7",
                "profile": {"enduser.id": RAW_ID, "url.full": f"https://x.test/p?who={RAW_ID}"},
                "studyin.free_text": "anything",
            }
        }
    )
    pseudonym = PSEUDONYMIZER.pseudonymize(RAW_ID)
    assert cleaned == {
        "app.context": {
            "user.hash": pseudonym,
            "profile": {"user.hash": pseudonym, "url.full": "https://x.test/p"},
        }
    }
    assert g.stats.hashed == 2 and g.stats.dropped == 2 and g.stats.rejected_undeclared == 1


def test_identity_values_that_are_not_ids_are_dropped() -> None:
    g = guard()
    assert g.clean({"user.id": [RAW_ID]}) == {}
    assert g.clean({"enduser.id": {"id": RAW_ID}}) == {}
    assert g.clean({"user.id": RAW_ID.encode()}) == {}
    assert g.clean({"user.id": 4711}) == {"user.hash": PSEUDONYMIZER.pseudonymize("4711")}
    assert PrivacyGuard().clean({"x": {"user.id": RAW_ID}}) == {"x": {}}  # no key: dropped


def test_bytes_are_dropped_at_any_depth() -> None:
    """Bytes are opaque: UTF-16 or compressed text hides an address from any scrubber."""
    g = guard()
    cleaned = g.clean(
        {
            "blob": EMAIL.encode(),
            "list": ["kept", EMAIL.encode("utf-16-le"), 3],
            "map": {"raw": bytearray(b"x"), "ok": 1},
        }
    )
    assert cleaned == {"list": ["kept", 3], "map": {"ok": 1}}
    assert g.stats.dropped == 3


def test_emails_in_arrays_of_arrays_are_scrubbed() -> None:
    cleaned = guard().clean({"tags": [["a", [f"to {EMAIL}"]], (EMAIL,)]})
    assert cleaned == {"tags": [["a", [f"to {EMAIL_PLACEHOLDER}"]], [EMAIL_PLACEHOLDER]]}


@pytest.mark.parametrize("address", INTERNATIONAL_ADDRESSES)
def test_internationalized_addresses_are_scrubbed(address: str) -> None:
    assert scrub_emails(f"mail {address} now") == f"mail {EMAIL_PLACEHOLDER} now"
    assert guard().clean({"note": f"<{address}>", "nested": {"n": [address]}}) == {
        "note": f"<{EMAIL_PLACEHOLDER}>",
        "nested": {"n": [EMAIL_PLACEHOLDER]},
    }


@pytest.mark.parametrize("address", [EMAIL, *INTERNATIONAL_ADDRESSES])
def test_percent_encoded_addresses_are_scrubbed(address: str) -> None:
    path = f"/users/{quote(address, safe='')}/profile%0Aforged"
    cleaned = guard().clean({"url.path": path, "name": f"GET {path}"})
    assert cleaned["url.path"] == f"/users/{EMAIL_PLACEHOLDER}/profile%0Aforged"  # %0A stays escaped
    assert guard().clean_name(f"GET {path}?q=1") == f"GET /users/{EMAIL_PLACEHOLDER}/profile%0Aforged"


def test_not_addresses_stay() -> None:
    for text in ("@decorator", "user@localhost", "50% done", "a%2Fb", "x @ y.z", "/items/{item_id}"):
        assert scrub_emails(text) == text


def test_keys_holding_an_address_are_dropped() -> None:
    assert guard().clean({EMAIL: 1, "m": {f"by {EMAIL}": 2, "k": 3}}) == {"m": {"k": 3}}


def test_declared_attributes_must_have_their_declared_type() -> None:
    g = guard()
    cleaned = g.clean(
        {
            "studyin.material.id": {"user.id": RAW_ID, "user.email": EMAIL},  # the kvlist of the issue
            "studyin.material.type": ["video"],
            "studyin.xp.amount": True,  # bool is not int
            "studyin.level": 3.0,
            "studyin.streak.days": "7",
            "studyin.ai.latency_ms": 812,  # int is a number
            "studyin.material.progress": 0.5,
            "studyin.session.materials_touched": ("cardio-101", EMAIL),
            "studyin.session.xp_earned": 30,
        }
    )
    assert cleaned == {
        "studyin.ai.latency_ms": 812,
        "studyin.material.progress": 0.5,
        "studyin.session.materials_touched": ["cardio-101", EMAIL_PLACEHOLDER],
        "studyin.session.xp_earned": 30,
    }
    assert g.stats.rejected_type == 5
    assert g.clean({"studyin.session.materials_touched": ["a", 1]}) == {}
    assert g.clean({"studyin.session.materials_touched": [["a"]]}) == {}


def _wire_type(schema: dict[str, Any], defs: dict[str, Any]) -> semconv.AttributeType:
    if "anyOf" in schema:
        return _wire_type(next(s for s in schema["anyOf"] if s.get("type") != "null"), defs)
    if "$ref" in schema:
        return _wire_type(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    kind = schema["type"]
    if kind == "array":
        assert _wire_type(schema["items"], defs) is semconv.AttributeType.STRING
        return semconv.AttributeType.STRING_ARRAY
    return {
        "string": semconv.AttributeType.STRING,
        "integer": semconv.AttributeType.INT,
        "number": semconv.AttributeType.DOUBLE,
    }[kind]


def test_declared_types_agree_with_the_event_models() -> None:
    seen = set()
    for model in events.EVENT_TYPES.values():
        schema = model.model_json_schema()
        for name, prop in schema["properties"].items():
            attribute = semconv.FIELD_ATTRIBUTES[name]
            assert semconv.ATTRIBUTE_TYPES[attribute] is _wire_type(prop, schema.get("$defs", {})), name
            seen.add(attribute)
    assert seen | {semconv.EVENT_VERSION} == semconv.DECLARED_ATTRIBUTES


def test_depth_is_bounded_even_for_a_list_that_contains_itself() -> None:
    loop: list[Any] = ["x"]
    loop.append(loop)
    cleaned = guard().clean({"loop": loop})
    depth = max(d for _, d in walk(cleaned["loop"]))
    assert depth == MAX_VALUE_DEPTH


def test_values_otlp_cannot_express_are_dropped() -> None:
    class Thing:
        pass

    assert guard().clean({"set": {1, 2}, "obj": Thing(), "nested": [Thing(), 1], "none": None}) == {
        "nested": [1],
        "none": None,
    }


@pytest.mark.timeout(60)
def test_scrubbing_is_linear_in_the_length_of_the_text() -> None:
    """An unbounded local part made every ``@`` cost the whole run before it (quadratic: hours
    for these strings); the scrubber must finish them like any other value."""
    for text in ("a" * 200_000 + "@b", "%40" * 100_000, "é" * 200_000 + "@x", "a@" + "b" * 200_000):
        assert len(scrub_emails(text)) > 0


# --- properties ---------------------------------------------------------------------------------


def _assert_clean_tree(value: Any) -> None:
    for item, depth in walk(value):
        assert not isinstance(item, bytes | bytearray | memoryview), "bytes left"
        assert depth <= MAX_VALUE_DEPTH + 1
        if isinstance(item, dict):
            for key, child in item.items():
                assert isinstance(key, str)
                declared = semconv.ATTRIBUTE_TYPES.get(key)
                if declared is semconv.AttributeType.STRING:
                    assert isinstance(child, str)
                elif declared is semconv.AttributeType.INT:
                    assert type(child) is int
                elif declared is semconv.AttributeType.DOUBLE:
                    assert type(child) in (int, float)
                elif declared is semconv.AttributeType.STRING_ARRAY:
                    assert isinstance(child, list) and all(isinstance(v, str) for v in child)
                elif key.startswith(semconv.NAMESPACE):
                    raise AssertionError(f"undeclared {key!r} left")
                if key == semconv.USER_HASH:
                    assert is_pseudonym(child)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_nothing_planted_survives_the_guard(case: Case) -> None:
    g = guard()
    cleaned = [g.clean(case.attributes), g.clean(case.event_attributes), g.clean(case.resource)]
    names = [g.clean_name(case.name), g.clean_name(case.event_name)]
    assert survivors(texts([cleaned, names]), case.planted) == []
    msgpack.packb([cleaned, names], use_bin_type=True)  # what is left can go on the wire
    for attributes in cleaned:
        _assert_clean_tree(attributes)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_nothing_planted_survives_guarded_span_exporter_into_otlp(case: Case) -> None:
    """Any other exporter, behind :class:`GuardedSpanExporter`, gets the same guarantee."""
    inner = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource(case.resource))
    provider.add_span_processor(SimpleSpanProcessor(GuardedSpanExporter(inner, guard())))
    with provider.get_tracer("t").start_as_current_span(case.name, attributes=case.attributes) as span:
        span.add_event(case.event_name, case.event_attributes)
    provider.shutdown()
    request = encode_spans(inner.get_finished_spans())  # what an OTLP exporter sends
    sent = ExportTraceServiceRequest.FromString(request.SerializeToString())
    assert len(sent.resource_spans[0].scope_spans[0].spans) == 1
    assert survivors(texts(sent), case.planted) == []


@settings(max_examples=200, deadline=None)
@given(
    address=st.one_of(ascii_emails(), idn_emails()),
    before=st.text(TEXT, max_size=8),
    after=st.text(TEXT, max_size=8),
    encode=st.booleans(),
)
def test_scrubber_finds_any_address_in_any_text(address: str, before: str, after: str, encode: bool) -> None:
    planted = quote(address, safe="") if encode else address
    scrubbed = scrub_emails(before + planted + after)
    assert address not in scrubbed and planted not in scrubbed
