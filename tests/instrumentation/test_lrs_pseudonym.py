"""The learner's LRS pseudonym (``user.lrs_hash``, docs/xapi.md "The actor"): computed next to ``user.hash``
under a key of its own, only when one is configured; the guard lets exactly this one new identity attribute
out, and only as a pseudonym; a raw id planted anywhere, at any depth, never leaves (canary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.mapping import LRS_ACTOR_FIELD, rows_from_span
from studyin_analytics.exporter.wire import decode_batch, encode_readable_spans
from studyin_analytics.instrumentation import PrivacyGuard, Pseudonymizer, StudyInTracker, events, semconv
from studyin_analytics.instrumentation import privacy as privacy_module
from studyin_analytics.instrumentation.privacy import is_pseudonym

ANALYTICS_KEYS = {"k1": b"analytics-key-one-0123456789"}
LRS = Pseudonymizer({"lrs1": b"lrs-key-of-its-own-0123456789"}, "lrs1")
WITH_LRS = Pseudonymizer(ANALYTICS_KEYS, "k1", lrs=LRS)
WITHOUT_LRS = Pseudonymizer(ANALYTICS_KEYS, "k1")
RAW_ID = "canary-lrs-5d4c3b2a"
CANARIES = (RAW_ID, "5d4c3b2a", RAW_ID.upper())


def test_settings_read_the_lrs_keys_and_their_file_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "lrs-keys"
    secret.write_text("lrs2=a-new-lrs-secret-0123456,lrs1=the-old-lrs-secret-012345\n")
    monkeypatch.setenv("STUDYIN_ANALYTICS_PSEUDONYM_KEYS", "k1=analytics-secret-0123456789")
    monkeypatch.setenv("STUDYIN_ANALYTICS_LRS_PSEUDONYM_KEYS_FILE", str(secret))
    configured = Settings()
    assert configured.active_lrs_key_id == "lrs2"
    pseudonymizer = Pseudonymizer.from_settings(configured)
    assert pseudonymizer.lrs is not None and pseudonymizer.lrs.active_key_id == "lrs2"
    identity = pseudonymizer.identity(RAW_ID)
    assert set(identity) == {semconv.USER_HASH, semconv.USER_LRS_HASH}
    assert identity[semconv.USER_LRS_HASH].startswith("lrs2:")
    assert identity[semconv.USER_LRS_HASH] != identity[semconv.USER_HASH]
    assert "the-old-lrs-secret" not in repr(configured)


def test_without_an_lrs_key_nothing_new_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYIN_ANALYTICS_PSEUDONYM_KEYS", "k1=analytics-secret-0123456789")
    pseudonymizer = Pseudonymizer.from_settings(Settings())
    assert pseudonymizer.lrs is None
    assert pseudonymizer.lrs_pseudonymize(RAW_ID) is None
    assert set(pseudonymizer.identity(RAW_ID)) == {semconv.USER_HASH}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lrs_pseudonym_keys": {"k1": "another-secret-0123456789"}}, "share no key id"),
        ({"lrs_pseudonym_keys": {"lrs1": "analytics-secret-0123456789"}}, "no secret"),
        ({"lrs_pseudonym_keys": {"lrs1": "short"}}, "shorter than 16"),
        ({"lrs_pseudonym_keys": {"lrs1": "lrs-secret-0123456789"}, "lrs_pseudonym_key_id": "x"}, "not among"),
    ],
)
def test_unusable_lrs_keys_are_refused_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        Settings(pseudonym_keys={"k1": "analytics-secret-0123456789"}, **changes)
    assert "analytics-secret" not in str(caught.value) and "lrs-secret" not in str(caught.value)


def test_the_lrs_pseudonym_stays_across_an_analytics_key_rotation() -> None:
    rotated = Pseudonymizer({"k2": b"analytics-key-two-0123456789", **ANALYTICS_KEYS}, "k2", lrs=LRS)
    before, after = WITH_LRS.identity(RAW_ID), rotated.identity(RAW_ID)
    assert before[semconv.USER_HASH] != after[semconv.USER_HASH]
    assert before[semconv.USER_LRS_HASH] == after[semconv.USER_LRS_HASH] == LRS.pseudonymize(RAW_ID)


def test_the_guard_hashes_a_raw_id_into_both_pseudonyms_and_drops_a_raw_lrs_hash() -> None:
    cleaned = PrivacyGuard(WITH_LRS).clean({"user.id": RAW_ID, "x": 1})
    assert cleaned == {**WITH_LRS.identity(RAW_ID), "x": 1}
    assert PrivacyGuard(WITHOUT_LRS).clean({"user.id": RAW_ID}) == WITHOUT_LRS.identity(RAW_ID)
    for value in (RAW_ID, 4711, [RAW_ID], {"user.id": RAW_ID}, b"lrs1:" + b"0" * 32, f"lrs1:{RAW_ID}"):
        assert PrivacyGuard(WITH_LRS).clean({semconv.USER_LRS_HASH: value}) == {}
    kept = {semconv.USER_LRS_HASH: LRS.pseudonymize(RAW_ID)}
    assert PrivacyGuard(None).clean(kept) == kept


def test_exactly_one_new_identity_attribute_is_allowed_out() -> None:
    """Of the attribute names that say "identity", the guard keeps pseudonyms under ``user.hash`` and
    ``user.lrs_hash`` only: the classification of every other name is what it was before."""
    pseudonym_slots = {
        key
        for key in ("user.hash", "user.lrs_hash", "user.lrs_id", "user.lrs", "lrs.actor", "user.hash2")
        if privacy_module._classify_key(key) == privacy_module._USER_HASH
    }
    assert pseudonym_slots == {semconv.USER_HASH, semconv.USER_LRS_HASH}
    assert semconv.USER_LRS_HASH not in semconv.DECLARED_ATTRIBUTES  # not a studyin.* event field


def _texts(value: Any) -> list[str]:
    """Every string inside ``value``, at any depth, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_texts(k), *_texts(v))]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _texts(item)]
    return [str(value)]


leaves = st.sampled_from([RAW_ID, RAW_ID.upper(), f"x {RAW_ID} y", f"lrs1:{RAW_ID}", 4711])
planted = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["user.id", "user.lrs_hash", "user.hash", "a", RAW_ID]), inner, max_size=3
        )
    ),
    max_leaves=8,
)
keys = st.sampled_from(["user.id", "enduser.id", "user.lrs_hash", "user.hash", "note", "user.lrs_id"])


@settings(max_examples=300, deadline=None)
@given(attributes=st.dictionaries(keys, planted, max_size=5))
def test_canary_no_raw_id_leaves_the_guard_at_any_depth(attributes: dict[str, Any]) -> None:
    """Anything but the identity slots may be kept by the guard as it was (a free-form ``note`` is the
    app's own business); the identity slots keep a pseudonym or nothing, at any depth."""
    cleaned = PrivacyGuard(WITH_LRS).clean(attributes)
    for slot in (semconv.USER_HASH, semconv.USER_LRS_HASH):
        if slot in cleaned:
            assert is_pseudonym(cleaned[slot]), cleaned[slot]
    for key in ("note", "user.lrs_id"):
        attributes.pop(key, None)
        cleaned.pop(key, None)
    text = json.dumps(_texts(cleaned))
    for canary in CANARIES:
        assert canary not in text


@settings(max_examples=60, deadline=None)
@given(user=st.sampled_from([RAW_ID, 987_654_321]), session=st.booleans())
def test_canary_tracker_to_event_rows(user: str | int, session: bool) -> None:
    """Tracker (with and without a session, stateless ends) -> guard -> wire -> rows: the raw id is in no
    byte of the wire and no row; every learning event row carries the LRS pseudonym."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=WITH_LRS)
    if session:
        with tracker.session(user, material_id="m-1") as s:
            tracker.material_view(None, "m-1", "video", session=s)
            tracker.emit(events.XpAwarded, session=s, xp_amount=5, xp_reason="quiz.correct")
    else:
        ticket = tracker.begin_session(user)
        tracker.emit(events.LevelUp, user_id=user, level=2, total_xp=100)
        tracker.end_session(user, ticket.session_id, started_at=ticket.started_at)
    blob = encode_readable_spans(exporter.get_finished_spans(), PrivacyGuard(WITH_LRS))
    canaries = (str(user), *CANARIES)
    for canary in canaries:
        assert canary.encode() not in blob
    rows = [row for record in decode_batch(blob) for row in rows_from_span(record)]
    assert rows and all(row.properties[LRS_ACTOR_FIELD] == LRS.pseudonymize(str(user)) for row in rows)
    text = json.dumps([_texts(row.properties) for row in rows])
    for canary in canaries:
        assert canary not in text
