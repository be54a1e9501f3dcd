"""Funnel definitions: each invalid field gets its own reason, and only the true one (server-free)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from studyin_analytics.aggregator.analysis.definitions import MIN_STEPS, FunnelDefinition

pytestmark = pytest.mark.unit
RANGE = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}


def _errors(body: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(pydantic.ValidationError) as caught:
        FunnelDefinition.model_validate(body)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


@pytest.mark.parametrize("within_s", ["x", 0, -5, 1.5])
def test_a_bad_step_is_the_only_error(within_s: object) -> None:
    """One bad step of two: the error names that step's field, not also "at least 2 items"."""
    errors = _errors(
        {**RANGE, "steps": [{"event": "session_start"}, {"event": "material_view", "within_s": within_s}]}
    )
    assert [loc for loc, _ in errors] == [("steps", 1, "within_s")], errors


@pytest.mark.parametrize("steps", [[], [{"event": "session_start"}]])
def test_too_few_steps_are_refused(steps: list[dict[str, str]]) -> None:
    errors = _errors({**RANGE, "steps": steps})
    assert errors and errors[0][0] == ("steps",) and f"at least {MIN_STEPS} items" in errors[0][1], errors


def test_the_schema_still_says_the_minimum() -> None:
    schema = FunnelDefinition.model_json_schema()
    assert schema["properties"]["steps"]["minItems"] == MIN_STEPS
