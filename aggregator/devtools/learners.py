"""Who studies when: the simulated learners of the demo's history and their sessions (pure, seeded).

Each learner has a habit: a usual time of day, how likely they study on a weekday and at the
weekend, how long their sessions last, whether they use flashcards and the AI coach. Some join
after the start, some drop out, and a few of those come back. :func:`plan` turns the habits into
session start times and lengths over the last ``days`` days, ending before ``until``; what
happens inside a session is decided while it is played (:mod:`.history`).

:attr:`Learner.pathway` (the course a learner works through, :mod:`.pathway`) is drawn here too,
deterministically; the learner's variant of the demo's experiment is not: the backend asks the real
``tracker.variant`` (:mod:`.experiment`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

MATERIALS: list[tuple[str, str]] = [
    ("cardio-101", "video"),
    ("cardio-valves", "video"),
    ("ecg-basics", "pdf"),
    ("ecg-arrhythmias", "pdf"),
    ("renal-qbank", "question_bank"),
    ("pharm-qbank", "question_bank"),
    ("pharm-cards", "flashcards"),
    ("anatomy-cards", "flashcards"),
    ("neuro-cases", "case_study"),
    ("endo-cases", "case_study"),
    ("micro-video", "video"),
    ("path-notes", "pdf"),
]
PATHWAYS = ("cardiology-basics", "pharmacology-core", None)


@dataclass(frozen=True)
class Learner:
    user_id: str
    hour: float
    """Usual start of study, UTC hours (a learner's evening is another's morning)."""
    weekday: float
    """Chance of studying on a weekday; the weekend's is :attr:`weekend`."""
    weekend: float
    minutes: float
    """Median session length in minutes."""
    joined: int
    """Day (0 = first day of the history) of the first possible session."""
    dropped: int | None
    """Day from which the learner stops, if they drop out."""
    returned: int | None
    """Day from which a drop-out studies again, if they come back."""
    flashcards: bool
    coach: bool
    pathway: str | None

    def active_on(self, day: int) -> bool:
        if day < self.joined:
            return False
        if self.dropped is not None and day >= self.dropped:
            return self.returned is not None and day >= self.returned
        return True


@dataclass(frozen=True)
class PlannedSession:
    learner: Learner
    start: datetime
    minutes: float
    seed: int


def learners(count: int, days: int, seed: int) -> list[Learner]:
    """``count`` learners with habits drawn from ``seed`` (user ids included: same seed, same ids)."""
    rng = random.Random(f"learners:{seed}")
    out: list[Learner] = []
    for number in range(count):
        dropped = rng.randint(days // 6, days - 3) if rng.random() < 0.3 else None
        returned = None
        if dropped is not None and rng.random() < 0.3 and dropped + 8 < days - 1:
            returned = rng.randint(dropped + 7, days - 1)
        diligence = rng.betavariate(2.2, 2.0)
        out.append(
            Learner(
                user_id=f"learner-{number:04d}-{rng.getrandbits(24):06x}",
                hour=rng.choice((6.5, 12.0, 17.5, 19.5, 21.0)) + rng.gauss(0, 1.0),
                weekday=min(0.9, 0.1 + 0.65 * diligence),
                weekend=min(0.8, (0.1 + 0.65 * diligence) * rng.uniform(0.3, 0.9)),
                minutes=rng.lognormvariate(math.log(18), 0.35),
                # Sign-ups spread over the weeks (cohorts for the retention view), a third on the first day.
                joined=0 if rng.random() < 0.35 else rng.randint(1, days * 2 // 3),
                dropped=dropped,
                returned=returned,
                flashcards=rng.random() < 0.6,
                coach=rng.random() < 0.55,
                pathway=rng.choice(PATHWAYS),
            )
        )
    return out


def plan(people: list[Learner], days: int, until: datetime, seed: int) -> list[PlannedSession]:
    """Every session of ``people`` over the ``days`` UTC days ending with ``until``'s, in start order.

    Sessions end at least a minute before ``until`` (nothing is in the future).
    """
    first = until.astimezone(UTC).date() - timedelta(days=days - 1)
    sessions: list[PlannedSession] = []
    for learner in people:
        rng = random.Random(f"plan:{seed}:{learner.user_id}")
        for day in range(days):
            sessions.extend(_day(learner, day, first + timedelta(days=day), until, rng))
    sessions.sort(key=lambda s: (s.start, s.learner.user_id))
    return sessions


def _day(learner: Learner, day: int, when: date, until: datetime, rng: random.Random) -> list[PlannedSession]:
    chance = learner.weekend if when.weekday() >= 5 else learner.weekday
    if not learner.active_on(day) or rng.random() >= chance:
        return []
    count = 1 + (rng.random() < 0.15) + (rng.random() < 0.03)
    midnight = datetime(when.year, when.month, when.day, tzinfo=UTC)
    at = min(max(learner.hour + rng.gauss(0, 1.2), 0.2), 22.0)
    out = []
    for _ in range(count):
        minutes = min(max(rng.lognormvariate(math.log(learner.minutes), 0.5), 3.0), 110.0)
        start = midnight + timedelta(hours=at, seconds=rng.randint(0, 59))
        end = start + timedelta(minutes=minutes)
        if end.date() != when or end > until - timedelta(minutes=1):
            break
        out.append(PlannedSession(learner, start, round(minutes, 3), rng.getrandbits(32)))
        at += minutes / 60 + rng.uniform(1.0, 4.0)
    return out
