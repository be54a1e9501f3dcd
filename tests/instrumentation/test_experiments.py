"""Assignment in the app: deterministic, sticky across key rotation, weighted, exposure recorded once."""

from __future__ import annotations

import hmac
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from studyin_analytics.instrumentation import StudyInTracker, semconv
from studyin_analytics.instrumentation.experiments import (
    Assigner,
    ExperimentSpec,
    decode_snapshot,
    encode_snapshot,
)
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.pipeline import PSEUDONYMIZER, Pipeline

pytestmark = pytest.mark.unit

KEY = "assignment-key-0123456789"
SPEC = ExperimentSpec("coach-prompt", 1, ("control", "treatment"), (1, 1))


def _exposures(pipeline: Pipeline) -> list[dict[str, object]]:
    return [
        dict(e.attributes or {})
        for s in pipeline.spans()
        for e in s.events
        if e.name == semconv.event_name("experiment_exposure")
    ]


def test_assignment_is_deterministic_and_weighted() -> None:
    spec = ExperimentSpec("flashcards", 3, ("a", "b", "c"), (1, 2, 7))
    assigner = Assigner(KEY)
    users = [f"user-{i}" for i in range(20_000)]
    first = [assigner.variant(spec, u) for u in users]
    assert first == [Assigner(KEY).variant(spec, u) for u in users]  # another process, same answer
    counts = [first.count(v) for v in spec.variants]
    # Chi-square goodness of fit against the weights (alpha 0.001: a fixed seed, not a flake).
    assert stats.chisquare(counts, [len(users) * w / 10 for w in spec.weights]).pvalue > 0.001
    # Versions and keys are independent randomisations.
    other = [
        Assigner(KEY).variant(ExperimentSpec("flashcards", 4, spec.variants, spec.weights), u) for u in users
    ]
    assert 0.3 < sum(a == b for a, b in zip(first, other, strict=True)) / len(users) < 0.7


def test_pseudonym_key_rotation_does_not_reshuffle(pipeline: Pipeline) -> None:
    before = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    rotated = StudyInTracker(
        tracer_provider=pipeline.tracer_provider,
        pseudonymizer=Pseudonymizer({"k2": b"another-key-0123456789", "k1": b"x" * 16}, "k2"),
    )
    for tracker in (before, rotated):
        tracker.use_experiments(lambda: {SPEC.key: SPEC}, assignment_key=KEY)
    users = [f"learner-{i}" for i in range(200)]
    assert [before.variant(u, SPEC.key) for u in users] == [rotated.variant(u, SPEC.key) for u in users]
    hashes = {e[semconv.USER_HASH] for e in _exposures(pipeline)}
    assert len(hashes) == 400  # two pseudonyms per learner, one assignment


def test_variant_records_one_exposure_and_never_the_raw_id(pipeline: Pipeline, no_network: None) -> None:
    tracker = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    tracker.use_experiments(lambda: {SPEC.key: SPEC}, assignment_key=KEY)
    chosen = {tracker.variant("learner-42", SPEC.key) for _ in range(5)}
    assert len(chosen) == 1
    (exposure,) = _exposures(pipeline)
    assert exposure == {
        semconv.EVENT_VERSION: 1,
        "studyin.experiment.key": SPEC.key,
        "studyin.experiment.version": 1,
        "studyin.experiment.variant": chosen.pop(),
        semconv.USER_HASH: PSEUDONYMIZER.pseudonymize("learner-42"),
    }
    assert "learner-42" not in repr(pipeline.spans()[0].to_json())


def test_not_running_gives_none_and_no_exposure(pipeline: Pipeline) -> None:
    tracker = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    assert tracker.variant("u", SPEC.key) is None  # no experiments configured
    now = time.time()
    later = ExperimentSpec("later", 1, ("a", "b"), (1, 1), starts_at=now + 3600)
    ended = ExperimentSpec("ended", 1, ("a", "b"), (1, 1), starts_at=now - 7200, ends_at=now - 3600)
    tracker.use_experiments(lambda: {"later": later, "ended": ended}, assignment_key=KEY)
    assert [tracker.variant("u", k) for k in ("later", "ended", "unknown")] == [None, None, None]
    assert _exposures(pipeline) == []


def test_remembered_exposures_are_bounded(pipeline: Pipeline) -> None:
    tracker = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    tracker.use_experiments(lambda: {SPEC.key: SPEC}, assignment_key=KEY, remembered=10)
    for i in range(25):
        tracker.variant(f"u{i}", SPEC.key)
    assert len(tracker._exposed) <= 10
    tracker.variant("u24", SPEC.key)  # still remembered: no second exposure
    assert len(_exposures(pipeline)) == 25


def test_a_new_snapshot_version_is_a_new_exposure(pipeline: Pipeline) -> None:
    current = {SPEC.key: SPEC}
    tracker = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    tracker.use_experiments(lambda: current, assignment_key=KEY)
    tracker.variant("u", SPEC.key)
    current = {SPEC.key: ExperimentSpec(SPEC.key, 2, ("control", "treatment"), (1, 3))}
    tracker.variant("u", SPEC.key)
    assert [e["studyin.experiment.version"] for e in _exposures(pipeline)] == [1, 2]


specs = st.builds(
    ExperimentSpec,
    st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
    st.integers(1, 1000),
    st.just(("control", "b", "c")),
    st.tuples(st.integers(1, 100), st.integers(1, 100), st.integers(1, 100)),
    st.floats(0, 2e9),
    st.none() | st.floats(2e9, 4e9),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(specs, max_size=4, unique_by=lambda s: s.key))
def test_snapshot_round_trips(values: list[ExperimentSpec]) -> None:
    assert decode_snapshot(encode_snapshot(values)) == {s.key: s for s in values}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b'{"experiments": [{"key": "Bad Key", "version": 1, "variants": [["a", 1], ["b", 1]]}]}',
        b'{"experiments": [{"key": "k", "version": 1, "variants": [["a", 0], ["b", 1]]}]}',
        b'{"experiments": [{"key": "k", "version": 1, "variants": [["a", 1]]}]}',
    ],
)
def test_bad_snapshots_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not an experiments snapshot"):
        decode_snapshot(payload)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=16, max_size=200), st.binary(max_size=300))
def test_the_assignment_hmac_is_hmac_sha256(key: bytes, message: bytes) -> None:
    assert Assigner(key).digest(message) == hmac.digest(key, message, "sha256")


def test_a_short_assignment_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Assigner("short")
