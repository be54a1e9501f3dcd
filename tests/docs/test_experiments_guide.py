"""docs/experiments.md, the life of an experiment: its example definition is valid, its command lines parse,
and its catalogue table names exactly the catalogue's metrics."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.aggregator.experiments.definitions import METRICS, ExperimentDefinition, metric_of
from tests.support import ROOT

pytestmark = pytest.mark.unit

DOC = (ROOT / "docs" / "experiments.md").read_text()


def test_the_example_definition_is_valid() -> None:
    block = re.search(r"```json\n(.*?)```", DOC, re.S)
    assert block is not None
    definition = ExperimentDefinition.model_validate(json.loads(block.group(1)))
    assert definition.primary_metric == "completion_rate"


def test_the_command_lines_parse() -> None:
    lines = [line for line in DOC.splitlines() if line.startswith("studyin-analytics experiments ")]
    assert len(lines) == 4
    for line in lines:
        required = re.sub(r"\[[^\]]*\]", "", line.split("#")[0])  # optional parts are in brackets
        args = build_parser().parse_args(shlex.split(required)[1:])
        assert args.action in {"create", "list", "show", "stop"}


def test_the_catalogue_table_is_the_catalogue() -> None:
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| (mean|rate)", DOC, re.M)
    assert {name: kind for name, kind in rows} == {m.name: m.kind for m in METRICS.values()}


def test_the_catalogue_table_names_custom_event_counts() -> None:
    assert re.search(r"^\| `custom:T` .*\| mean \|", DOC, re.M)
    assert metric_of("custom:org.example/case_completed").kind == "mean"
