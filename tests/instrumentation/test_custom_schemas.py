"""The registrable subset, SchemaVer compatibility, privacy at registration and the one validation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.instrumentation.custom_schemas import (
    CompiledSchema,
    CustomRegistry,
    EventError,
    SchemaRefused,
    check_registration,
    check_subset,
    compatibility,
    decode_snapshot,
    describe_errors,
    encode_snapshot,
    level_of,
    validate_event,
)
from tests.support.custom_events import case_schema

pytestmark = pytest.mark.unit

NAME = "org.example/case_completed"


def base() -> dict[str, Any]:
    """The case schema of tests/support/custom_events.py with one property of every other kind."""
    schema = case_schema()
    schema["properties"].update(
        {
            "level": {"type": "string", "enum": ["easy", "hard"]},
            "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "pattern": "^[a-z]+$"}},
            "attempts": {"type": "integer", "minimum": 1},
        }
    )
    return schema


def reasons(schema: Any) -> list[str]:
    return [reason for _, reason in check_subset(schema)]


def test_the_base_schema_is_inside_the_subset() -> None:
    assert check_subset(base()) == []
    assert check_registration(NAME, "1-0-0", base(), {}) == "MODEL"


@pytest.mark.parametrize(
    ("change", "pointer", "fragment"),
    [
        (lambda s: s.update(type="array"), "/type", "must be object"),
        (lambda s: s.pop("additionalProperties"), "/additionalProperties", "must be false"),
        (lambda s: s.update(anyOf=[]), "/anyOf", "not allowed at the top level"),
        (lambda s: s.update({"$schema": "http://json-schema.org/draft-07/schema#"}), "/$schema", "2020-12"),
        (lambda s: s.update(properties={}), "/properties", "1 to 64"),
        (lambda s: s.update(required=["nope"]), "/required", "undeclared"),
        (lambda s: s["properties"].update(note={"type": "string"}), "/properties/note", "no free text"),
        (lambda s: s["properties"].update(x={"type": "object"}), "/properties/x", "type must be one of"),
        (lambda s: s["properties"].update(x={"type": "null"}), "/properties/x", "type must be one of"),
        (lambda s: s["properties"].update(x={"type": "array", "items": {"type": "integer"}}), "/properties/x",
         "maxItems"),
        (lambda s: s["properties"].update(x={"type": "array", "maxItems": 2, "items": {"type": "array"}}),
         "/properties/x/items", "type must be one of"),
        (lambda s: s["properties"].update(x={"type": "integer", "format": "int32"}), "/properties/x/format",
         "not allowed"),
        (lambda s: s["properties"].update(x={"type": "number", "minimum": "0"}), "/properties/x/minimum",
         "must be a number"),
        (lambda s: s["properties"].update(x={"type": "string", "enum": []}), "/properties/x/enum",
         "1 to 256"),
        (lambda s: s["properties"].update(x={"type": "string", "pattern": "("}), "/properties/x/pattern",
         "not a regular"),
        (lambda s: s["properties"].update(Bad={"type": "boolean"}), "/properties/Bad", "snake_case"),
        (lambda s: s["properties"].update(email={"type": "string", "maxLength": 9}), "/properties/email",
         "identity"),
        (lambda s: s["properties"].update(first_name={"type": "string", "maxLength": 9}),
         "/properties/first_name", "identity"),
        (lambda s: s["properties"].update(phone2={"type": "string", "maxLength": 9}), "/properties/phone2",
         "identity"),
        (lambda s: s["properties"].update(free_comment={"type": "string", "maxLength": 9}),
         "/properties/free_comment", "identity"),
        (lambda s: s["properties"].update(
            patient_ref={"type": "string", "maxLength": 10, "x-studyin-pseudonymous": True}),
         "/properties/patient_ref", "maxLength >= 64"),
        (lambda s: s["properties"].update(
            patient_ref={"type": "integer", "x-studyin-pseudonymous": True}),
         "/properties/patient_ref", "a string with a maxLength only"),
    ],
)  # fmt: skip
def test_every_refusal_of_the_subset_names_where_and_why(change: Any, pointer: str, fragment: str) -> None:
    schema = base()
    change(schema)
    found = check_subset(schema)
    assert any(p == pointer and fragment in r for p, r in found), found
    with pytest.raises(SchemaRefused) as refused:
        check_registration(NAME, "1-0-0", schema, {})
    assert fragment in str(refused.value)


def test_identity_like_names_pass_when_marked_pseudonymous() -> None:
    schema = base()
    schema["properties"]["patient_id"] = {"type": "string", "maxLength": 64, "x-studyin-pseudonymous": True}
    assert check_subset(schema) == []


@pytest.mark.parametrize("name", ["case_completed", "org.example", "Org.example/x", "org.example/Case", ""])
def test_names_must_be_vendor_qualified(name: str) -> None:
    with pytest.raises(SchemaRefused, match="vendor-qualified"):
        check_registration(name, "1-0-0", base(), {})


@pytest.mark.parametrize("version", ["1.0.0", "0-1-0", "1-0", "01-0-0", "1-0-0-0", "x"])
def test_versions_must_be_schemaver(version: str) -> None:
    with pytest.raises(SchemaRefused, match="SchemaVer"):
        check_registration(NAME, version, base(), {})


def test_levels_follow_the_registered_history() -> None:
    assert level_of("1-0-0", []) == ("MODEL", None)
    assert level_of("1-0-1", ["1-0-0"]) == ("ADDITION", "1-0-0")
    assert level_of("1-1-0", ["1-0-0", "1-0-1"]) == ("REVISION", "1-0-1")
    assert level_of("2-0-0", ["1-0-0", "1-1-0"]) == ("MODEL", None)
    assert level_of("1-1-1", ["1-0-0", "1-1-0", "2-0-0"]) == ("ADDITION", "1-1-0")
    for version, existing, fragment in [
        ("1-0-0", ["1-0-0"], "registered already"),
        ("2-0-0", [], "next MODEL version is 1-0-0"),
        ("1-0-2", ["1-0-0"], "after 1-0-0 come"),
        ("1-2-0", ["1-0-0"], "after 1-0-0 come"),
        ("3-0-0", ["1-0-0"], "next MODEL version is 2-0-0"),
        ("1-1-0", ["1-0-0", "1-0-1", "1-1-0"], "registered already"),
        ("1-0-1", ["1-0-0", "1-1-0"], "after 1-1-0 come"),
    ]:
        with pytest.raises(SchemaRefused, match=fragment):
            level_of(version, existing)


def test_an_addition_may_only_add_optional_properties_and_widen() -> None:
    old = base()
    new = copy.deepcopy(old)
    new["properties"]["hints_used"] = {"type": "integer", "minimum": 0}
    new["properties"]["case_id"]["maxLength"] = 128
    new["properties"]["level"]["enum"] = ["easy", "hard", "expert"]
    assert compatibility(old, new, "ADDITION") == []
    assert check_registration(NAME, "1-0-1", new, {"1-0-0": old}) == "ADDITION"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda s: s["properties"].pop("passed"), "removing a property needs a MODEL change"),
        (lambda s: s["properties"].update(passed={"type": "integer"}), "type needs a MODEL change"),
        (lambda s: (s["properties"].update(hints={"type": "integer"}), s["required"].append("hints")),
         "must be optional"),
        (lambda s: s["properties"]["case_id"].update(maxLength=10), "may not narrow"),
        (lambda s: s["properties"]["score"].update(maximum=50), "may not narrow"),
        (lambda s: s["properties"]["attempts"].update(minimum=2), "may not narrow"),
        (lambda s: s["properties"]["level"].update(enum=["easy"]), "may not narrow"),
        (lambda s: s["properties"]["tags"].update(maxItems=2), "may not narrow"),
        (lambda s: s["properties"]["tags"]["items"].update(pattern="^[a-c]+$"), "may not narrow"),
        (lambda s: s["required"].append("passed"), "which existing properties are required"),
        (lambda s: s["required"].remove("score"), "which existing properties are required"),
    ],
)  # fmt: skip
def test_every_refusal_of_an_addition(change: Any, fragment: str) -> None:
    old = base()
    new = copy.deepcopy(old)
    change(new)
    with pytest.raises(SchemaRefused, match=fragment):
        check_registration(NAME, "1-0-1", new, {"1-0-0": old})


def test_a_revision_may_narrow_and_change_required_but_not_types_or_removals() -> None:
    old = base()
    new = copy.deepcopy(old)
    new["properties"]["case_id"]["maxLength"] = 10
    new["required"].append("passed")
    assert check_registration(NAME, "1-1-0", new, {"1-0-0": old}) == "REVISION"
    for change, fragment in [
        (lambda s: s["properties"].pop("passed"), "removing a property needs a MODEL change, not REVISION"),
        (lambda s: s["properties"].update(score={"type": "integer"}), "type needs a MODEL change"),
        (lambda s: (s["properties"].update(h={"type": "integer"}), s["required"].append("h")),
         "must be optional"),
        (lambda s: s["properties"]["case_id"].update({"x-studyin-pseudonymous": True, "maxLength": 64}),
         "type needs a MODEL change"),
    ]:  # fmt: skip
        bad = copy.deepcopy(old)
        change(bad)
        with pytest.raises(SchemaRefused, match=fragment):
            check_registration(NAME, "1-1-0", bad, {"1-0-0": old})


def test_a_model_change_may_change_anything_inside_the_subset() -> None:
    new = {"type": "object", "additionalProperties": False, "properties": {"minutes": {"type": "integer"}}}
    assert check_registration(NAME, "2-0-0", new, {"1-0-0": base()}) == "MODEL"


def registry() -> CustomRegistry:
    return CustomRegistry({(NAME, "1-0-0"): CompiledSchema.compile(NAME, "1-0-0", base())})


def test_validation_gives_pointers_and_reasons_without_values() -> None:
    bad = {"case_id": "x" * 70, "score": 101, "extra": "secret@example.org", "tags": ["A"], "level": "nope"}
    errors = validate_event(registry(), NAME, "1-0-0", bad)
    assert errors == [
        EventError("/case_id", "fails maxLength 64"),
        EventError("/extra", "not declared in the schema"),
        EventError("/level", "fails enum"),
        EventError("/score", "fails maximum 100"),
        EventError("/tags/0", "fails pattern"),
    ]
    text = describe_errors(errors)
    assert "secret" not in text and "xxx" not in text and "101" not in text and "nope" not in text
    assert validate_event(registry(), NAME, "1-0-0", {"score": True}) == [
        EventError("/case_id", "required"),
        EventError("/score", 'fails type "number"'),
    ]


def test_unknown_and_malformed_claims_have_reasons() -> None:
    assert validate_event(registry(), NAME, "1-0-1", {}) == [
        EventError("", f"schema {NAME} 1-0-1 is not registered")
    ]
    assert validate_event(registry(), "nope", "1-0-0", {}) == [
        EventError("", "schema name is not vendor-qualified")
    ]
    assert validate_event(registry(), NAME, 1, {}) == [EventError("", "schema version is not SchemaVer")]
    assert validate_event(registry(), NAME, "1-0-0", [1]) == [EventError("", "properties must be an object")]
    assert validate_event(registry(), NAME, "1-0-0", {"case_id": "c", "score": 3}) == []


def test_the_snapshot_round_trips_and_refuses_garbage() -> None:
    payload = encode_snapshot([(NAME, "1-0-0", base(), True)])
    decoded = decode_snapshot(payload)
    compiled = decoded.get(NAME, "1-0-0")
    assert compiled is not None and compiled.deprecated
    for garbage in (b"", b"{", b"[1]", b'[{"name": "a"}]', b"null"):
        with pytest.raises(ValueError):
            decode_snapshot(garbage)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=80))
values = st.one_of(
    scalars, st.lists(scalars, max_size=5), st.dictionaries(st.text(max_size=5), scalars, max_size=3)
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=12), values, max_size=8))
def test_any_properties_validate_without_crashing_or_quoting_values(props: dict[str, Any]) -> None:
    errors = validate_event(registry(), NAME, "1-0-0", props)
    valid = registry().schemas[(NAME, "1-0-0")].validator.is_valid(props)
    assert (errors == []) == valid
    for error in errors:
        assert error.pointer == "" or error.pointer.startswith("/")
        for value in props.values():
            if isinstance(value, str) and len(value) > 3:
                assert value not in error.reason


WIDENINGS = [
    lambda s: s["properties"]["case_id"].update(maxLength=100),
    lambda s: s["properties"]["score"].update(maximum=1000),
    lambda s: s["properties"]["score"].update(minimum=-5),
    lambda s: s["properties"]["level"].update(enum=["easy", "hard", "expert"]),
    lambda s: s["properties"]["tags"].update(maxItems=9),
    lambda s: s["properties"].update(hint={"type": "boolean"}),
    lambda s: s["properties"]["attempts"].pop("minimum"),
]
valid_data = st.fixed_dictionaries(
    {"case_id": st.text(max_size=64), "score": st.floats(0, 100) | st.integers(0, 100)},
    optional={
        "passed": st.booleans(),
        "level": st.sampled_from(["easy", "hard"]),
        "tags": st.lists(st.from_regex(r"^[a-z]+$", fullmatch=True), max_size=3),
        "attempts": st.integers(1, 10**6),
    },
)


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, len(WIDENINGS) - 1)), st.lists(valid_data, min_size=1, max_size=5))
def test_an_accepted_addition_keeps_all_historical_data_valid(
    changes: set[int], data: list[dict[str, Any]]
) -> None:
    old = base()
    new = copy.deepcopy(old)
    for i in sorted(changes):
        WIDENINGS[i](new)
    assert check_registration(NAME, "1-0-1", new, {"1-0-0": old}) == "ADDITION"
    before = CompiledSchema.compile(NAME, "1-0-0", old)
    after = CompiledSchema.compile(NAME, "1-0-1", new)
    for item in data:
        assert before.errors(item) == []
        assert after.errors(item) == []
