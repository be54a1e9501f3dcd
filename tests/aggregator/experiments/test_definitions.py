"""Custom event counts as experiment metrics: ``custom:T`` names a vendor-qualified custom event type
(the registry's own name rule), anything else is refused naming the field. Server-free."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from studyin_analytics.aggregator.experiments.definitions import (
    CustomMetric,
    ExperimentDefinition,
    custom_event_type,
    metric_of,
)
from studyin_analytics.instrumentation.custom_schemas import NAME_PATTERN
from tests.support.experiments import definition

pytestmark = pytest.mark.unit


def test_the_metric_pattern_is_the_registry_name_rule() -> None:
    (constraints,) = CustomMetric.__metadata__
    assert constraints.pattern == "^custom:" + NAME_PATTERN.pattern.removeprefix("^")


def test_a_custom_metric_is_a_count_per_learner() -> None:
    parsed = ExperimentDefinition.model_validate(
        definition("c", primary_metric="custom:org.example/case_completed", guardrail_metrics=["xp"])
    )
    assert parsed.metrics == ["custom:org.example/case_completed", "xp"]
    assert custom_event_type(parsed.primary_metric) == "org.example/case_completed"
    assert custom_event_type("xp") is None
    info = metric_of(parsed.primary_metric)
    assert (info.kind, info.scale, info.raters_only) == ("mean", 1, False)


@pytest.mark.parametrize(
    "name", ["custom:", "custom:no-vendor", "custom:Org.Example/X", "custom_org.example/x"]
)
def test_malformed_custom_metrics_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ExperimentDefinition.model_validate(definition("c", guardrail_metrics=[name]))
    assert all(e["loc"][:2] == ("guardrail_metrics", 0) for e in refused.value.errors())


@pytest.mark.parametrize("name", ["revenue", 7, None, "custom:no-vendor"])
def test_an_unknown_metric_is_one_error_with_one_reason(name: object) -> None:
    """Not one error per member of the metric union, labelled with pydantic's internal type names."""
    with pytest.raises(ValidationError) as caught:
        ExperimentDefinition.model_validate(definition("c", primary_metric=name))
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [("primary_metric",)], errors
    assert "unknown metric" in errors[0]["msg"] and "custom:<" in errors[0]["msg"]
