"""docs/api.md stays true: its funnel request (a `curl` line to copy) is a valid definition."""

from __future__ import annotations

import re
import shlex

import pytest

from studyin_analytics.aggregator.analysis.definitions import FunnelDefinition
from tests.support import ROOT

pytestmark = pytest.mark.unit

DOC = (ROOT / "docs" / "api.md").read_text()


def test_the_funnel_example_is_a_valid_definition() -> None:
    (command,) = [b for b in re.findall(r"```sh\n(.*?)```", DOC, re.S) if "analysis/funnels" in b]
    words = shlex.split(command.replace("\\\n", " "))
    body = words[words.index("-d") + 1]
    definition = FunnelDefinition.model_validate_json(body)
    assert [s.event for s in definition.steps] == ["material_view", "material_complete"]
