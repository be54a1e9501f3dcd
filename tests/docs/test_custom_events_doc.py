"""docs/custom-events.md stays true: its schema registers, its reasons are the validation's, its command
lines parse."""

from __future__ import annotations

import json
import shlex

import pytest

from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.instrumentation.custom_schemas import (
    CompiledSchema,
    CustomRegistry,
    check_registration,
    describe_errors,
    validate_event,
)
from tests.support import ROOT

pytestmark = pytest.mark.unit
DOC = (ROOT / "docs" / "custom-events.md").read_text()
NAME = "org.example/case_completed"


def blocks(language: str) -> list[str]:
    """The fenced blocks of the page opened with ```` ```language ````, in order."""
    found: list[str] = []
    current: list[str] | None = None
    for line in DOC.splitlines():
        if current is None and line.startswith("```"):
            current = [] if line[3:] == language else None
            if line[3:] != language:
                current = ["<other>"]
        elif current is not None and line == "```":
            if current[:1] != ["<other>"]:
                found.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return found


def test_the_example_schema_registers_and_the_example_reasons_are_the_validations() -> None:
    schema = json.loads(blocks("json")[0])
    assert check_registration(NAME, "1-0-0", schema, {}) == "MODEL"
    registry = CustomRegistry({(NAME, "1-0-0"): CompiledSchema.compile(NAME, "1-0-0", schema)})
    reasons = describe_errors(
        validate_event(registry, NAME, "1-0-0", {"case_id": "c" * 70, "score": 500, "comment": "x"})
    )
    assert f"\n{reasons}\n" in DOC
    track = json.loads(blocks("json")[1])
    (item,) = track["events"]
    assert validate_event(registry, item["type"], item["data"]["version"], item["data"]["properties"]) == []


def test_every_documented_command_line_parses() -> None:
    parser = build_parser()
    lines = [
        line for block in blocks("") for line in block.splitlines() if line.startswith("studyin-analytics ")
    ]
    assert len(lines) >= 7
    for line in lines:
        args = parser.parse_args(shlex.split(line)[1:])
        assert callable(args.func)
