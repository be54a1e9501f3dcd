"""The demo's pathways: short courses whose funnel the staff dashboard shows (pure, seeded by the caller).

A pathway is a few modules in order, materials of their own (outside the everyday pool of
:data:`.learners.MATERIALS`, so nothing else matches the funnel's filters). A learner on a pathway
(:attr:`.learners.Learner.pathway`) works on the next module in some of their sessions: views it,
completes it with a chance that falls along the course, and after a session that did not complete
it may give up, each module with its own chance; a few who gave up come back weeks later
(:func:`next_module`). So most who start do not finish, and every step loses a different share.

The demo saves each pathway as a funnel (view the first module, then complete each module, within
:data:`FUNNEL_WINDOW_S`); :func:`funnel_truth` counts the same from what the simulation did, by the
funnel rules of ``docs/analytics.md`` (ordered: each step later than the one before, the last at
most the window after the first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from ..analysis.definitions import FunnelDefinition
from .learners import PATHWAYS as PATHWAY_NAMES


@dataclass(frozen=True)
class Pathway:
    name: str
    modules: tuple[tuple[str, str], ...]
    """(material id, material type), in course order."""
    complete: tuple[float, ...]
    """Chance that a session working on module i completes it."""
    give_up: tuple[float, ...]
    """Chance of giving up after a session that worked on module i without completing it."""


PATHWAYS: dict[str, Pathway] = {
    p.name: p
    for p in (
        Pathway(
            "cardiology-basics",
            (
                ("cb-heart-anatomy", "video"),
                ("cb-cardiac-cycle", "video"),
                ("cb-ecg-reading", "pdf"),
                ("cb-chest-pain-case", "case_study"),
            ),
            complete=(0.6, 0.5, 0.4, 0.5),
            give_up=(0.35, 0.2, 0.35, 0.25),
        ),
        Pathway(
            "pharmacology-core",
            (
                ("pc-pharmacokinetics", "video"),
                ("pc-receptors", "pdf"),
                ("pc-antibiotics-qbank", "question_bank"),
                ("pc-prescribing-case", "case_study"),
            ),
            complete=(0.55, 0.4, 0.5, 0.45),
            give_up=(0.4, 0.3, 0.2, 0.3),
        ),
    )
}
assert set(PATHWAYS) == {n for n in PATHWAY_NAMES if n is not None}
WORK_CHANCE = 0.5
"""Chance that a session of a learner on a pathway works on its next module."""
RETURN_CHANCE = 0.3
RETURN_AFTER_DAYS = (14, 35)
FUNNEL_WINDOW_S = 28 * 86_400
"""A learner converts when the last module is completed at most four weeks after the first view."""
GONE = date.max
"""``paused_until`` of a learner who gave up for good."""


@dataclass
class PathwayState:
    """Where a learner stands on their pathway."""

    next_module: int = 0
    paused_until: date | None = None


@dataclass(frozen=True)
class ModuleWork:
    """One session's work on a pathway: the module, and whether it is completed."""

    index: int
    material_id: str
    material_type: str
    completed: bool


def materials() -> list[tuple[str, str]]:
    return [module for p in PATHWAYS.values() for module in p.modules]


def next_module(rng: random.Random, pathway: Pathway, state: PathwayState, day: date) -> ModuleWork | None:
    """The work of a session on ``day`` (``None``: none); ``state`` moves on as decided."""
    if state.next_module >= len(pathway.modules) or (
        state.paused_until is not None and day < state.paused_until
    ):
        return None
    if rng.random() >= WORK_CHANCE:
        return None
    index = state.next_module
    material_id, material_type = pathway.modules[index]
    completed = rng.random() < pathway.complete[index]
    state.paused_until = None
    if completed:
        state.next_module += 1
    elif rng.random() < pathway.give_up[index]:
        come_back = rng.random() < RETURN_CHANCE
        state.paused_until = day + timedelta(days=rng.randint(*RETURN_AFTER_DAYS)) if come_back else GONE
    return ModuleWork(index, material_id, material_type, completed)


def funnel_definition(pathway: Pathway, start: datetime, end: datetime) -> FunnelDefinition:
    """View the first module, then complete every module, in order, within the window."""
    first_id = pathway.modules[0][0]
    steps: list[dict[str, object]] = [{"event": "material_view", "filters": [_material(first_id)]}]
    steps += [{"event": "material_complete", "filters": [_material(m)]} for m, _ in pathway.modules]
    return FunnelDefinition.model_validate(
        {"steps": steps, "start": start, "end": end, "window_s": FUNNEL_WINDOW_S}
    )


def _material(material_id: str) -> dict[str, object]:
    return {"property": "material_id", "values": [material_id]}


def funnel_truth(learners: list[list[tuple[int, int]]], steps: int, start_us: int, end_us: int) -> list[int]:
    """Learners reaching each step, from each learner's (step, time in µs) events.

    Step 0 is the first module's view, step i + 1 the completion of module i. For each entering
    event, taking the earliest later event of every next step gives the earliest chain, so the
    furthest step any valid chain reaches.
    """
    window_us = FUNNEL_WINDOW_S * 1_000_000
    counts = [0] * steps
    for events in learners:
        times = [sorted(t for s, t in events if s == step) for step in range(steps)]
        best = 0
        for first in times[0]:
            if not start_us <= first < end_us:
                continue
            reached, at = 1, first
            for later in times[1:]:
                after = next((t for t in later if t > at), None)
                if after is None or after - first > window_us:
                    break
                reached, at = reached + 1, after
            best = max(best, reached)
        for step in range(best):
            counts[step] += 1
    return counts
