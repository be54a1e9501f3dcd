"""The demo's experiment: one A/B test with a small true effect, and its truth per variant (pure).

``daily-goal`` (control and treatment, 1:1) runs from the history's first day. The simulated backend
asks ``tracker.variant`` at every session start (the real assignment and exposure, under a throw-away
assignment key); a learner in ``treatment`` sees a daily goal and completes an everyday material a
little more often (:data:`EFFECT`), so XP per learner is a few per cent higher: an effect the analysis
should find, with an interval, but not a large one. :func:`truth` gives each variant's learners and
per-learner means of the experiment's metrics as the simulation counted them (every event of an
exposed learner follows their first exposure: it is recorded at their first session's start).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..experiments.definitions import ExperimentDefinition

KEY = "daily-goal"
CONTROL, TREATMENT = "control", "treatment"
EFFECT = 0.06
"""Added to the chance of completing an everyday material in ``treatment`` (0.55 in control)."""
METRICS = ("xp", "sessions", "study_minutes")
"""Primary first; the means :func:`truth` gives."""


def definition(start: datetime) -> ExperimentDefinition:
    return ExperimentDefinition.model_validate(
        {
            "key": KEY,
            "variants": {CONTROL: 1, TREATMENT: 1},
            "starts_at": start,
            "primary_metric": METRICS[0],
            "guardrail_metrics": list(METRICS[1:]),
            "minimum_effect": 0.05,
        }
    )


@dataclass(frozen=True)
class VariantTruth:
    learners: int
    means: dict[str, float]
    """Metric -> mean per learner (study minutes in minutes)."""


def truth(
    variants: dict[str, str], xp: dict[str, int], sessions: dict[str, int], study_seconds: dict[str, float]
) -> dict[str, VariantTruth]:
    """Per variant: exposed learners and their metric means (``variants``: learner -> variant)."""
    out: dict[str, VariantTruth] = {}
    for variant in (CONTROL, TREATMENT):
        members = [u for u, v in variants.items() if v == variant]
        n = len(members)
        totals = {
            "xp": sum(xp.get(u, 0) for u in members),
            "sessions": sum(sessions.get(u, 0) for u in members),
            "study_minutes": sum(study_seconds.get(u, 0.0) for u in members) / 60,
        }
        out[variant] = VariantTruth(n, {m: (totals[m] / n if n else 0.0) for m in METRICS})
    return out
