"""StudyIn learning events as xAPI 1.0.3 statements: the mapping (pure: no I/O, no clock, no randomness).

One event row gives at most one statement, and always the same one: its ``id`` is a UUID derived from
the event id (:func:`statement_id`), its ``timestamp`` is the event's time, and nothing else varies, so
sending it again is idempotent under the xAPI rules (same id, same statement: no new record).

What goes in is decided by whitelists, never by copying: the event's fields are validated with the
event's own model (:mod:`..instrumentation.events`) and each mapped field is placed by hand, so an
unknown property, the analytics pseudonym (``user_hash``) or anything planted in a row cannot reach a
statement. The actor is an xAPI ``account`` named by the learner's **LRS pseudonym**, a keyed HMAC under
a key of its own that the app computes and carries on the event (:data:`LRS_ACTOR_FIELD`; docs/xapi.md
says why the forwarder cannot derive it); never an ``mbox``, a name or a raw id.

Verbs and activity types are the ADL, cmi5, Activity Streams, TinCan-registry and flashcards-profile
IRIs where one fits; the rest live under one configurable base (:class:`XapiConfig`). The table in
docs/xapi.md is checked against this module by ``tests/docs/test_xapi_doc.py``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple, NotRequired, TypedDict
from urllib.parse import urlsplit

from pydantic import ValidationError

from ...instrumentation import events
from ...instrumentation.privacy import is_pseudonym
from ..consumer.mapping import LRS_ACTOR_FIELD as _LRS_ACTOR_FIELD
from ..consumer.mapping import EventRow

# --- statement shapes (the JSON sent to the LRS) ----------------------------------------------

LanguageMap = dict[str, str]


class Account(TypedDict):
    homePage: str
    name: str


class Agent(TypedDict):
    objectType: Literal["Agent"]
    account: Account


class Verb(TypedDict):
    id: str
    display: LanguageMap


class ActivityDefinition(TypedDict, total=False):
    type: str
    name: LanguageMap
    extensions: dict[str, Any]


class Activity(TypedDict):
    objectType: Literal["Activity"]
    id: str
    definition: NotRequired[ActivityDefinition]


class Score(TypedDict, total=False):
    scaled: float
    raw: int
    min: int
    max: int


class Result(TypedDict, total=False):
    score: Score
    completion: bool
    duration: str
    extensions: dict[str, Any]


class ContextActivities(TypedDict, total=False):
    other: list[Activity]


class Context(TypedDict, total=False):
    platform: str
    contextActivities: ContextActivities
    extensions: dict[str, Any]


class Statement(TypedDict):
    id: str
    actor: Agent
    verb: Verb
    object: Activity
    timestamp: str
    context: Context
    result: NotRequired[Result]


# --- standard vocabulary -------------------------------------------------------------------------

ADL_VERBS: Final = "http://adlnet.gov/expapi/verbs/"
VERB_INITIALIZED: Final = ADL_VERBS + "initialized"
VERB_TERMINATED: Final = ADL_VERBS + "terminated"
VERB_ABANDONED: Final = "https://w3id.org/xapi/adl/verbs/abandoned"  # cmi5: session ended abnormally
VERB_EXPERIENCED: Final = ADL_VERBS + "experienced"
VERB_PROGRESSED: Final = ADL_VERBS + "progressed"
VERB_COMPLETED: Final = ADL_VERBS + "completed"
VERB_ASKED: Final = ADL_VERBS + "asked"
VERB_EARNED: Final = "http://id.tincanapi.com/verb/earned"  # exactMatch of the Open Badges "earned"
VERB_RATED: Final = "http://id.tincanapi.com/verb/rated"  # "the rating should be in result.score"

TYPE_LMS: Final = "http://id.tincanapi.com/activitytype/lms"
TYPE_REWARD: Final = "http://id.tincanapi.com/activitytype/reward"
TYPE_BADGE: Final = "http://activitystrea.ms/badge"

# Video is Activity Streams' type, not the xAPI Video Profile's: that profile's `completed` needs player
# data StudyIn does not have (time code, video length), and Ralph's VideoCompleted model requires it.
MATERIAL_ACTIVITY_TYPES: Final[dict[events.MaterialType, str]] = {
    events.MaterialType.PDF: "http://id.tincanapi.com/activitytype/document",
    events.MaterialType.VIDEO: "http://activitystrea.ms/video",
    events.MaterialType.AUDIO: "http://activitystrea.ms/audio",
    events.MaterialType.QUESTION_BANK: "http://adlnet.gov/expapi/activities/assessment",
    events.MaterialType.FLASHCARDS: "https://w3id.org/xapi/flashcards/activity-types/flashcard-deck",
    events.MaterialType.ARTICLE: "http://activitystrea.ms/article",
    events.MaterialType.CASE_STUDY: "http://id.tincanapi.com/activitytype/scenario",
    events.MaterialType.OTHER: "http://id.tincanapi.com/activitytype/resource",
}

EXT_SESSION_ID: Final = "https://w3id.org/xapi/cmi5/context/extensions/sessionid"
EXT_PROGRESS: Final = "https://w3id.org/xapi/cmi5/result/extensions/progress"  # integer percent 0..100

STATEMENT_ID_NAMESPACE: Final = uuid.UUID("62819aed-f4dd-47ae-8402-f69619b5b6a6")
"""uuid5 namespace of statement ids. Never change it: every statement already in an LRS would get a
second copy under a new id when its event is sent again."""

LRS_ACTOR_FIELD: Final = _LRS_ACTOR_FIELD
"""Event property holding the learner's LRS pseudonym (``<lrs key id>:<32 hex>``), computed by the app
under the LRS key and carried on the wire as the attribute ``user.lrs_hash`` (docs/xapi.md)."""

SYSTEM_EVENT_TYPES: Final = frozenset(
    {events.ApiRequest.event_type, events.SystemMetric.event_type, events.ExperimentExposure.event_type}
)
"""Operational events: never learning records, never forwarded whatever the selection says. An
experiment exposure is one too: which arm a learner was put in is the experiment's, not a learning
experience, and an LRS (often shared with a school) has no business holding it."""

RATING_MIN, RATING_MAX = 1, 5  # events.AiCoachFeedback.rating


# --- configuration ---------------------------------------------------------------------------------


def _absolute_iri(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{name} must be an absolute http(s) IRI without query or fragment")
    if any(c.isspace() for c in value):
        raise ValueError(f"{name} must not contain white space")
    return value.rstrip("/")


@dataclass(frozen=True)
class XapiConfig:
    """Where StudyIn's own IRIs live and whose accounts the actors are.

    ``iri_base`` prefixes the project-specific verbs, activities, activity types and extensions (they are
    permanent in an LRS: choose it once, on a domain StudyIn controls). ``home_page`` is the ``homePage``
    of every actor's account: the system in which the pseudonymous account name is unique.
    """

    iri_base: str
    home_page: str
    platform: str = "StudyIn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "iri_base", _absolute_iri("iri_base", self.iri_base))
        object.__setattr__(self, "home_page", _absolute_iri("home_page", self.home_page))
        if not self.platform.strip():
            raise ValueError("platform must not be empty")

    def verb(self, name: str) -> str:
        return f"{self.iri_base}/verbs/{name}"

    def activity(self, path: str) -> str:
        return f"{self.iri_base}/activities/{path}"

    def activity_type(self, name: str) -> str:
        return f"{self.iri_base}/activity-types/{name}"

    def extension(self, name: str) -> str:
        return f"{self.iri_base}/extensions/{name}"


class SelectionError(ValueError):
    """A selection names an unknown event type or a system event."""


@dataclass(frozen=True)
class Selection:
    """Which learning event types are forwarded (system events never are)."""

    event_types: frozenset[str]

    def __post_init__(self) -> None:
        for name in sorted(self.event_types):
            if name in SYSTEM_EVENT_TYPES:
                raise SelectionError(f"event type {name!r} is a system event: never forwarded to an LRS")
            if name not in MAPPED_EVENT_TYPES:
                known = ", ".join(sorted(MAPPED_EVENT_TYPES))
                raise SelectionError(f"event type {name!r} is unknown (learning event types: {known})")

    @classmethod
    def of(cls, names: Iterable[str]) -> Selection:
        return cls(frozenset(names))

    @classmethod
    def all_learning_events(cls) -> Selection:
        return cls(MAPPED_EVENT_TYPES)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self.event_types


# --- the mapping -----------------------------------------------------------------------------------


class SkipReason(StrEnum):
    SYSTEM_EVENT = "system_event"
    NOT_SELECTED = "not_selected"
    NO_LRS_ACTOR = "no_lrs_actor"
    INVALID_EVENT = "invalid_event"


class Skipped(NamedTuple):
    """An event that gives no statement, and why (``detail`` names a field, never a value)."""

    reason: SkipReason
    detail: str = ""


class _Parts(NamedTuple):
    verb: Verb
    object: Activity
    result: Result | None = None
    extensions: dict[str, Any] | None = None
    related: list[Activity] | None = None


def statement_id(event_id: uuid.UUID) -> uuid.UUID:
    """The statement id of an event: uuid5 of the event id under :data:`STATEMENT_ID_NAMESPACE`."""
    return uuid.uuid5(STATEMENT_ID_NAMESPACE, str(event_id))


def iso_duration(seconds: float) -> str:
    """ISO 8601 duration at the 0.01 s precision xAPI keeps (``PT1H2M3.45S``; ``PT0S``)."""
    centis = round(seconds * 100)
    hours, rest = divmod(centis, 360_000)
    minutes, centis = divmod(rest, 6_000)
    whole, fraction = divmod(centis, 100)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if whole or fraction or not (hours or minutes):
        text += f"{whole}.{fraction:02d}".rstrip("0").rstrip(".") + "S"
    return text


def progress_percent(fraction: float) -> int:
    """cmi5's integer percent; floored, so 100 only when the material is wholly done."""
    return min(100, math.floor(fraction * 100 + 1e-9))


def timestamp(when: datetime) -> str:
    """UTC, always with microseconds: one text per instant, so a re-sent statement is byte-identical."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def carried_lrs_pseudonym(row: EventRow) -> str | None:
    """The LRS pseudonym the app put on the event (:data:`LRS_ACTOR_FIELD`), if it is one."""
    value = row.properties.get(LRS_ACTOR_FIELD)
    return value if is_pseudonym(value) else None


class StatementMapper:
    """Event rows -> xAPI statements under one configuration and selection."""

    def __init__(
        self,
        config: XapiConfig,
        selection: Selection | None = None,
        actor_name: Callable[[EventRow], str | None] = carried_lrs_pseudonym,
    ) -> None:
        self.config = config
        self.selection = selection if selection is not None else Selection.all_learning_events()
        self._actor_name = actor_name

    def map(self, row: EventRow) -> Statement | Skipped:
        """The statement of ``row``, or why there is none."""
        if row.event_type in SYSTEM_EVENT_TYPES:
            return Skipped(SkipReason.SYSTEM_EVENT)
        if row.event_type not in self.selection:
            return Skipped(SkipReason.NOT_SELECTED, row.event_type)
        name = self._actor_name(row)
        if name is None:
            return Skipped(SkipReason.NO_LRS_ACTOR)
        event = _parse(row)
        if isinstance(event, Skipped):
            return event
        parts = _MAPPERS[row.event_type](self, event)
        return self._assemble(row, event, name, parts)

    def _assemble(self, row: EventRow, event: events.DomainEvent, name: str, parts: _Parts) -> Statement:
        context: Context = {"platform": self.config.platform}
        session = getattr(event, "session_id", None) or row.session_id
        extensions = dict(parts.extensions or {})
        if session is not None:
            extensions[EXT_SESSION_ID] = str(session)
        if extensions:
            context["extensions"] = extensions
        if parts.related:
            context["contextActivities"] = {"other": parts.related}
        statement: Statement = {
            "id": str(statement_id(row.event_id)),
            "actor": {"objectType": "Agent", "account": {"homePage": self.config.home_page, "name": name}},
            "verb": parts.verb,
            "object": parts.object,
            "timestamp": timestamp(row.occurred_at),
            "context": context,
        }
        if parts.result:
            statement["result"] = parts.result
        return statement

    # --- building blocks ---

    def platform_activity(self) -> Activity:
        return _activity(self.config.activity("studyin"), TYPE_LMS, self.config.platform)

    def material(self, material_id: str, material_type: events.MaterialType | None) -> Activity:
        iri = self.config.activity(f"materials/{material_id}")
        if material_type is None:
            return {"objectType": "Activity", "id": iri}
        activity = _activity(iri, MATERIAL_ACTIVITY_TYPES[material_type])
        activity["definition"]["extensions"] = {self.config.extension("material-type"): material_type.value}
        return activity

    def coach_interaction(self, interaction_id: uuid.UUID) -> Activity:
        return _activity(
            self.config.activity(f"ai-coach/interactions/{interaction_id}"),
            self.config.activity_type("ai-coach-interaction"),
        )

    def streak(self) -> Activity:
        return _activity(
            self.config.activity("streaks/daily-study"),
            self.config.activity_type("streak"),
            "daily study streak",
        )

    def result_extensions(self, **values: Any) -> Result:
        return {"extensions": {self.config.extension(k.replace("_", "-")): v for k, v in values.items()}}


def _verb(iri: str) -> Verb:
    return {"id": iri, "display": {"en-US": iri.rsplit("/", 1)[-1]}}


def _activity(iri: str, activity_type: str, name: str | None = None) -> Activity:
    definition: ActivityDefinition = {"type": activity_type}
    if name is not None:
        definition["name"] = {"en-US": name}
    return {"objectType": "Activity", "id": iri, "definition": definition}


def _parse(row: EventRow) -> events.DomainEvent | Skipped:
    """The row's fields validated by the event's model (only the model's own fields are read)."""
    model = events.EVENT_TYPES[row.event_type]
    fields = {k: v for k, v in row.properties.items() if k in model.model_fields}
    if "session_id" in model.model_fields and fields.get("session_id") is None and row.session_id:
        fields["session_id"] = row.session_id  # carried on the session span rather than the event
    try:
        return model.model_validate(fields)
    except ValidationError as exc:  # hide_input_in_errors: the message quotes no value
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "event"
        return Skipped(SkipReason.INVALID_EVENT, f"{row.event_type}.{field}: {first['msg']}")


# --- one function per event type (the rows of the table in docs/xapi.md) ------------------------


def _session_start(m: StatementMapper, e: events.SessionStart) -> _Parts:
    related = [m.material(e.material_id, None)] if e.material_id else None
    return _Parts(_verb(VERB_INITIALIZED), m.platform_activity(), related=related)


def _session_end(m: StatementMapper, e: events.SessionEnd) -> _Parts:
    # cmi5: a session ends `terminated`, or `abandoned` when it ended abnormally (here: idle timeout).
    verb = VERB_ABANDONED if e.end_reason is events.SessionEndReason.TIMEOUT else VERB_TERMINATED
    result = m.result_extensions(end_reason=e.end_reason.value, xp_earned=e.xp_earned)
    result["duration"] = iso_duration(e.duration_s)
    touched = [m.material(material, None) for material in dict.fromkeys(e.materials_touched)]
    return _Parts(_verb(verb), m.platform_activity(), result, related=touched or None)


def _material_view(m: StatementMapper, e: events.MaterialView) -> _Parts:
    return _Parts(_verb(VERB_EXPERIENCED), m.material(e.material_id, e.material_type))


def _material_progress(m: StatementMapper, e: events.MaterialProgress) -> _Parts:
    result: Result = {"extensions": {EXT_PROGRESS: progress_percent(e.progress)}}
    return _Parts(_verb(VERB_PROGRESSED), m.material(e.material_id, e.material_type), result)


def _material_complete(m: StatementMapper, e: events.MaterialComplete) -> _Parts:
    result: Result = {"completion": True}
    if e.time_spent_s is not None:
        result["duration"] = iso_duration(e.time_spent_s)
    if e.score is not None:
        result["score"] = {"scaled": e.score}
    return _Parts(_verb(VERB_COMPLETED), m.material(e.material_id, e.material_type), result)


def _xp_awarded(m: StatementMapper, e: events.XpAwarded) -> _Parts:
    xp = _activity(m.config.activity("xp"), TYPE_REWARD, "experience points")
    return _Parts(
        _verb(VERB_EARNED),
        xp,
        m.result_extensions(xp_amount=e.xp_amount),
        extensions={m.config.extension("xp-reason"): e.xp_reason},
    )


def _level_up(m: StatementMapper, e: events.LevelUp) -> _Parts:
    level = _activity(
        m.config.activity(f"levels/{e.level}"), m.config.activity_type("level"), f"level {e.level}"
    )
    return _Parts(_verb(VERB_EARNED), level, m.result_extensions(total_xp=e.total_xp))


def _achievement_unlocked(m: StatementMapper, e: events.AchievementUnlocked) -> _Parts:
    badge = _activity(m.config.activity(f"achievements/{e.achievement_id}"), TYPE_BADGE)
    return _Parts(_verb(VERB_EARNED), badge)


def _streak_updated(m: StatementMapper, e: events.StreakUpdated) -> _Parts:
    return _Parts(
        _verb(m.config.verb("extended")), m.streak(), m.result_extensions(streak_days=e.streak_days)
    )


def _streak_broken(m: StatementMapper, e: events.StreakBroken) -> _Parts:
    result = m.result_extensions(previous_streak_days=e.previous_streak_days)
    return _Parts(_verb(m.config.verb("broke")), m.streak(), result)


def _ai_coach_interaction(m: StatementMapper, e: events.AiCoachInteraction) -> _Parts:
    # The topic only: model, tokens and latency are operations data, not a learning record.
    topic = {m.config.extension("topic-category"): e.topic_category}
    return _Parts(_verb(VERB_ASKED), m.coach_interaction(e.interaction_id), extensions=topic)


def _ai_coach_feedback(m: StatementMapper, e: events.AiCoachFeedback) -> _Parts:
    scaled = (e.rating - RATING_MIN) / (RATING_MAX - RATING_MIN)
    score: Score = {"scaled": scaled, "raw": e.rating, "min": RATING_MIN, "max": RATING_MAX}
    return _Parts(_verb(VERB_RATED), m.coach_interaction(e.interaction_id), {"score": score})


_MAPPERS: Final[dict[str, Callable[[StatementMapper, Any], _Parts]]] = {
    events.SessionStart.event_type: _session_start,
    events.SessionEnd.event_type: _session_end,
    events.MaterialView.event_type: _material_view,
    events.MaterialProgress.event_type: _material_progress,
    events.MaterialComplete.event_type: _material_complete,
    events.XpAwarded.event_type: _xp_awarded,
    events.LevelUp.event_type: _level_up,
    events.AchievementUnlocked.event_type: _achievement_unlocked,
    events.StreakUpdated.event_type: _streak_updated,
    events.StreakBroken.event_type: _streak_broken,
    events.AiCoachInteraction.event_type: _ai_coach_interaction,
    events.AiCoachFeedback.event_type: _ai_coach_feedback,
}

MAPPED_EVENT_TYPES: Final = frozenset(_MAPPERS)
"""Every learning event type: each has a statement (tests check that every event type is mapped or a
system event)."""
