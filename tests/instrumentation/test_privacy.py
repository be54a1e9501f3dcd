"""Privacy rules: pseudonyms, the attribute guard, exceptions, GuardedSpanExporter."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, StatusCode

from studyin_analytics.instrumentation import GuardedSpanExporter, PrivacyGuard, Pseudonymizer, semconv
from studyin_analytics.instrumentation.emails import EMAIL_PLACEHOLDER
from studyin_analytics.instrumentation.privacy import is_pseudonym

pytestmark = pytest.mark.unit

RAW_ID = "canary-4711-raw"
EMAIL = "canary.person@hospital.example"


def test_pseudonyms_carry_key_id_and_verify_across_keys() -> None:
    old = Pseudonymizer({"k1": b"a" * 20}, "k1")
    rotated = Pseudonymizer({"k2": b"b" * 20, "k1": b"a" * 20}, "k2")
    before = old.pseudonymize(RAW_ID)
    after = rotated.pseudonymize(RAW_ID)
    assert before.startswith("k1:") and after.startswith("k2:") and is_pseudonym(after)
    assert RAW_ID not in before + after
    assert rotated.verify(before, RAW_ID) and rotated.verify(after, RAW_ID)
    assert not rotated.verify(after, "someone-else")
    assert rotated.pseudonyms(RAW_ID) == [after, before]


@settings(max_examples=200, deadline=None)
@given(
    user_id=st.one_of(st.text(max_size=80), st.integers()),
    key=st.binary(min_size=1, max_size=200),
    other=st.binary(min_size=1, max_size=200),
)
def test_pseudonyms_are_the_hmac_of_the_id(user_id: str | int, key: bytes, other: bytes) -> None:
    """The precomputed HMAC states give exactly HMAC-SHA256's pseudonyms, under every key, for any id."""

    def expected(kid: str, secret: bytes) -> str:
        return f"{kid}:{hmac.new(secret, str(user_id).encode(), hashlib.sha256).hexdigest()[:32]}"

    pseudonymizer = Pseudonymizer({"k1": key, "k0": other}, "k1")
    pseudonymizer.previous_key_id = "k0"
    assert pseudonymizer.pseudonymize(str(user_id)) == expected("k1", key)
    assert pseudonymizer.pseudonymize(str(user_id)) == expected("k1", key)  # the cached one
    assert pseudonymizer.pseudonyms(user_id) == [expected("k1", key), expected("k0", other)]
    assert pseudonymizer.link(user_id) == {semconv.USER_PREVIOUS_HASH: expected("k0", other)}
    assert pseudonymizer.verify(expected("k0", other), user_id)
    assert pseudonymizer.verify(expected("k1", key), user_id)
    with pytest.raises(AttributeError):
        pseudonymizer.active_key_id = "k0"  # type: ignore[misc]  # a rotation is a new pseudonymizer


def test_guard_rules() -> None:
    guard = PrivacyGuard(Pseudonymizer({"k1": b"a" * 20}, "k1"))
    cleaned = guard.clean(
        {
            "user.id": RAW_ID,
            "user.email": EMAIL,
            "client.address": "203.0.113.9",
            "url.query": f"email={EMAIL}",
            "url.full": f"https://studyin.test/x?user={RAW_ID}",
            "http.request.header.authorization": ["Bearer x"],
            "exception.type": "ValueError",
            "exception.message": f"no user {RAW_ID}",
            "exception.stacktrace": f'Traceback...\nValueError: no user "{RAW_ID}"',
            "studyin.material.id": "cardio-101",
            "studyin.free_text": "anything",
            "db.note": f"written by {EMAIL}",
            "tags": ["ok", EMAIL],
        }
    )
    assert cleaned == {
        "user.hash": guard.pseudonymizer.pseudonymize(RAW_ID),  # type: ignore[union-attr]
        "url.full": "https://studyin.test/x",
        "exception.type": "ValueError",
        "studyin.material.id": "cardio-101",
        "db.note": f"written by {EMAIL_PLACEHOLDER}",
        "tags": ["ok", EMAIL_PLACEHOLDER],
    }
    assert guard.stats.rejected_undeclared == 1
    assert guard.stats.hashed == 1


def test_rules_hold_when_keys_are_already_known() -> None:
    """The guard remembers what the rules say about each key: the second pass must agree."""
    guard = PrivacyGuard(Pseudonymizer({"k1": b"a" * 20}, "k1"))

    class Text(str):
        pass

    attributes = {
        "user.id": RAW_ID,
        "client.address": "203.0.113.9",
        "url.full": f"https://studyin.test/x?user={RAW_ID}",
        "studyin.free_text": "anything",
        "db.note": Text(f"written by {EMAIL}"),  # a str subclass is text, not a sequence of characters
        "tags": (EMAIL, 3),
        "count": 3,
    }
    first, second = guard.clean(attributes), guard.clean(attributes)
    assert (
        first
        == second
        == {
            "user.hash": guard.pseudonymizer.pseudonymize(RAW_ID),  # type: ignore[union-attr]
            "url.full": "https://studyin.test/x",
            "db.note": f"written by {EMAIL_PLACEHOLDER}",
            "tags": [EMAIL_PLACEHOLDER, 3],
            "count": 3,
        }
    )


def test_raw_id_in_user_hash_slot_is_dropped() -> None:
    assert PrivacyGuard().clean({semconv.USER_HASH: RAW_ID}) == {}


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        (f"ValueError: no user {RAW_ID}", "ValueError"),
        ("builtins.KeyError", "builtins.KeyError"),
        (f"{EMAIL} is not allowed", None),
        (None, None),
    ],
)
def test_status_description_keeps_the_type_only(description: str | None, expected: str | None) -> None:
    assert PrivacyGuard().clean_status_description(description) == expected


def test_guarded_exporter_cleans_sdk_spans_for_any_exporter() -> None:
    inner = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc", "user.email": EMAIL}))
    guarded = GuardedSpanExporter(inner, PrivacyGuard(Pseudonymizer({"k1": b"a" * 20}, "k1")))
    provider.add_span_processor(SimpleSpanProcessor(guarded))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("linked") as other:
        pass
    with (
        pytest.raises(ValueError),
        tracer.start_as_current_span(
            f"GET /search?q={EMAIL}",
            attributes={"enduser.id": RAW_ID, "studyin.undeclared": "x", "http.route": "/search"},
            links=[Link(other.get_span_context(), {"user.email": EMAIL, "note": EMAIL})],
        ) as span,
    ):
        span.add_event("studyin.material_view", {"studyin.material.id": "m-1", "user.id": RAW_ID})
        raise ValueError(f"lookup failed for {RAW_ID} <{EMAIL}>")
    provider.shutdown()
    exported = inner.get_finished_spans()[-1]
    assert exported.name == "GET /search"
    assert dict(exported.attributes or {}) == {
        "user.hash": guarded.guard.pseudonymizer.pseudonymize(RAW_ID),  # type: ignore[union-attr]
        "http.route": "/search",
    }
    assert exported.status.status_code == StatusCode.ERROR
    assert exported.status.description == "ValueError"
    exception = next(e for e in exported.events if e.name == "exception")
    assert set(exception.attributes or {}) == {"exception.type", "exception.escaped"}
    assert dict(exported.links[0].attributes or {}) == {"note": EMAIL_PLACEHOLDER}
    assert "user.email" not in exported.resource.attributes
    assert exported.resource.attributes["service.name"] == "svc"
    serialized = encode_spans([exported]).SerializeToString()  # what an OTLP exporter sends
    assert RAW_ID.encode() not in serialized and EMAIL.encode() not in serialized
    assert exported.context == span.get_span_context()
    # the SDK's own span was not touched (frozen) and still holds the raw data
    assert RAW_ID in str(span.events[-1].attributes)  # type: ignore[attr-defined]
