"""Experiment assignment in the app: which variant a learner sees, and the exposure it records.

A learner's variant is computed in-process, with no I/O: HMAC-SHA256 under the app's *assignment key*
(``STUDYIN_ANALYTICS_EXPERIMENT_ASSIGNMENT_KEY``, its own key: never a pseudonym key, never rotated while
an experiment runs) of the experiment key, its version and the learner's raw id. The first 64 bits of the
digest, scaled to the sum of the integer weights, pick the variant. So the assignment is deterministic and
sticky (same learner, same version: same variant, in every process), independent of pseudonym key
rotation, and the raw id never leaves the process (only the exposure's ``user.hash`` does).

Which experiments run reaches the app as a *snapshot* (:func:`decode_snapshot` of the bytes the
aggregator publishes to the bus's Redis; ``exporter/snapshots.py`` follows it in the background and keeps
the last good one when Redis is away). The tracker reads the snapshot through a plain callable, so this
layer never touches Redis: ``tracker.use_experiments(follower.current)``.

:meth:`ExperimentExposures.variant` returns the variant and records one ``experiment_exposure`` event the
first time this process sees that learner in that experiment version; later calls are a dictionary
lookup. The exposures remembered are bounded (cleared when full): forgetting one only costs a repeated
exposure event, which the aggregator ignores (the learner's first exposure counts).
"""

from __future__ import annotations

import json
import re
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import semconv
from .hmac_sha256 import HmacSha256
from .sessions import current_session
from .span_events import KnownClean

if TYPE_CHECKING:
    from .carriers import EventCarrier

__all__ = [
    "EXPOSURE_EVENT",
    "Assigner",
    "ExperimentExposures",
    "ExperimentSpec",
    "Snapshot",
    "decode_snapshot",
    "encode_snapshot",
]

EXPOSURE_EVENT = "experiment_exposure"
SNAPSHOT_KIND = "experiments"
"""The snapshot kind definitions travel under (``exporter/snapshots.py``)."""
DEFAULT_REMEMBERED = 100_000
"""Exposures one process remembers (learner x experiment) before it starts afresh."""
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_EXPOSURE_NAME = semconv.event_name(EXPOSURE_EVENT)
_KEY_ATTR = semconv.FIELD_ATTRIBUTES["experiment_key"]
_VERSION_ATTR = semconv.FIELD_ATTRIBUTES["experiment_version"]
_VARIANT_ATTR = semconv.FIELD_ATTRIBUTES["variant"]


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    """What an app needs of a running experiment: its key, version, variants and integer weights."""

    key: str
    version: int
    variants: tuple[str, ...]
    weights: tuple[int, ...]
    starts_at: float = 0.0
    """Epoch seconds: before this, no learner is assigned."""
    ends_at: float | None = None
    """Epoch seconds: from this on, no learner is assigned."""
    cumulative: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _SLUG.match(self.key):
            raise ValueError("key: must be a slug")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError("version: must be a whole number >= 1")
        if len(self.variants) < 2 or len(self.variants) != len(self.weights):
            raise ValueError("variants: at least two, one weight each")
        if len(set(self.variants)) != len(self.variants) or not all(_SLUG.match(v) for v in self.variants):
            raise ValueError("variants: distinct slugs")
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.weights):
            raise ValueError("weights: whole numbers >= 1")
        running, total = [], 0
        for weight in self.weights:
            total += weight
            running.append(total)
        object.__setattr__(self, "cumulative", tuple(running))

    @property
    def total(self) -> int:
        return self.cumulative[-1]


Snapshot = Mapping[str, ExperimentSpec]
"""Experiment key -> its running version."""


def encode_snapshot(specs: list[ExperimentSpec]) -> bytes:
    """The snapshot's bytes (JSON): the running experiments, one version each."""
    body = [
        {
            "key": s.key,
            "version": s.version,
            "variants": [list(p) for p in zip(s.variants, s.weights, strict=True)],
            "starts_at": s.starts_at,
            "ends_at": s.ends_at,
        }
        for s in sorted(specs, key=lambda s: s.key)
    ]
    return json.dumps({"experiments": body}, separators=(",", ":")).encode()


def decode_snapshot(payload: bytes) -> dict[str, ExperimentSpec]:
    """Specs from :func:`encode_snapshot`'s bytes; ``ValueError`` on anything else (keep the old one)."""
    try:
        document: Any = json.loads(payload)
        specs = [
            ExperimentSpec(
                item["key"],
                item["version"],
                tuple(name for name, _ in item["variants"]),
                tuple(weight for _, weight in item["variants"]),
                float(item.get("starts_at", 0.0)),
                None if item.get("ends_at") is None else float(item["ends_at"]),
            )
            for item in document["experiments"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an experiments snapshot ({type(exc).__name__})") from None
    return {spec.key: spec for spec in specs}


class Assigner(HmacSha256):
    """Deterministic assignment under one key (see the module docstring); HMAC-SHA256 with the key's padded
    hash states computed once (a third of ``hmac.digest``'s cost per call; a test checks it equals it)."""

    __slots__ = ()

    def __init__(self, key: str | bytes) -> None:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if len(raw) < 16:
            raise ValueError("assignment key: at least 16 bytes")
        super().__init__(raw)

    def variant(self, spec: ExperimentSpec, user_id: str) -> str:
        digest = self.digest(f"{spec.key}\x1f{spec.version}\x1f{user_id}".encode())
        point = (int.from_bytes(digest[:8], "big") * spec.total) >> 64
        return spec.variants[bisect_right(spec.cumulative, point)]


class ExperimentExposures:
    """The tracker's experiment methods (a mixin of :class:`.tracker.StudyInTracker`)."""

    _experiment_source: Callable[[], Snapshot] | None = None
    _assigner: Assigner | None = None
    _exposed: dict[tuple[str, int, str], str]
    _remembered: int = DEFAULT_REMEMBERED
    _exposure_lock = threading.Lock()

    if TYPE_CHECKING:
        carrier: EventCarrier

        def user_hash(self, user_id: str | int | None) -> str | None: ...

    def use_experiments(
        self,
        source: Callable[[], Snapshot],
        *,
        assignment_key: str | bytes | None = None,
        remembered: int = DEFAULT_REMEMBERED,
    ) -> None:
        """Read running experiments from ``source`` (e.g. ``SnapshotFollower.current``); the key
        defaults to ``experiment_assignment_key`` of the settings."""
        if assignment_key is None:
            from .settings import get_settings

            secret = get_settings().experiment_assignment_key
            if secret is None:
                raise ValueError(
                    "experiment_assignment_key: required to assign experiments "
                    "(set STUDYIN_ANALYTICS_EXPERIMENT_ASSIGNMENT_KEY)"
                )
            assignment_key = secret.get_secret_value()
        self._assigner = Assigner(assignment_key)
        self._experiment_source = source
        self._exposed = {}
        self._remembered = max(1, remembered)

    def variant(self, user_id: str | int, experiment_key: str) -> str | None:
        """The learner's variant of a running experiment, its exposure recorded once; ``None`` when the
        experiment is not running here (unknown, stopped, no snapshot yet): show the default then."""
        source = self._experiment_source
        if source is None:
            return None
        spec = source().get(experiment_key)
        if spec is None:
            return None
        now = time.time()
        if now < spec.starts_at or (spec.ends_at is not None and now >= spec.ends_at):
            return None
        user = user_id if type(user_id) is str else str(user_id)
        seen = (experiment_key, spec.version, user)
        chosen = self._exposed.get(seen)
        if chosen is not None:
            return chosen
        assert self._assigner is not None
        chosen = self._assigner.variant(spec, user)
        user_hash = self.user_hash(user_id)
        if user_hash is None:
            return chosen
        attributes = KnownClean(
            {  # values built here: the SDK need not check them again (span_events)
                semconv.EVENT_VERSION: 1,
                _KEY_ATTR: experiment_key,
                _VERSION_ATTR: spec.version,
                _VARIANT_ATTR: chosen,
                semconv.USER_HASH: user_hash,
            }
        )
        self.carrier.record(_EXPOSURE_NAME, attributes, current_session(), lifecycle=False)
        exposed = self._exposed
        if len(exposed) >= self._remembered:
            with self._exposure_lock:
                exposed.clear()
        exposed[seen] = chosen
        return chosen
