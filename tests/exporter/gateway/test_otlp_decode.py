"""The body decoders and the event window as pure functions (no servers): gzip against Python's
reader, OTLP/JSON against what protobuf's own encoder writes, the window's bounds."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.admission import EventWindow
from studyin_analytics.exporter.gateway.otlp_decode import (
    MAX_DEPTH,
    RequestRefused,
    gunzip,
    parse_json,
    parse_protobuf,
)
from tests.support.exporter import make_spans
from tests.support.gateway import otlp_json

pytestmark = pytest.mark.unit


@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    level=st.integers(0, 9),
)
@hsettings(max_examples=200, deadline=None)
def test_gunzip_reads_what_pythons_gzip_reads(parts: list[bytes], level: int) -> None:
    """Any series of members decodes to the concatenation, as Python's multi-member reader says."""
    body = b"".join(gzip.compress(part, compresslevel=level) for part in parts)
    assert gunzip(body, 10_000) == gzip.decompress(body) == b"".join(parts)


@given(member=st.binary(max_size=200), junk=st.binary(min_size=1, max_size=30))
@hsettings(max_examples=200, deadline=None)
def test_gunzip_refuses_anything_after_the_last_member_that_is_not_a_member(
    member: bytes, junk: bytes
) -> None:
    body = gzip.compress(member) + junk
    try:
        decoded = gunzip(body, 10_000)
    except RequestRefused as exc:
        assert exc.status == 400
    else:  # the junk happened to be a member itself (it cannot be: too short for a header + trailer)
        pytest.fail(f"accepted {body!r} as {decoded!r}")


def test_gunzip_bounds_the_output_over_all_members_and_stays_linear() -> None:
    with pytest.raises(RequestRefused) as refused:
        gunzip(gzip.compress(b"x" * 600) * 2, 1000)
    assert refused.value.status == 413
    empty = gzip.compress(b"", mtime=0)
    many = empty * 50_000  # a megabyte of empty members: linear, not quadratic
    assert gunzip(many, 10) == b""
    raw = zlib.compress(b"abc")  # zlib, not gzip
    with pytest.raises(RequestRefused):
        gunzip(raw, 100)


def test_json_written_by_protobufs_encoder_parses_to_the_same_request() -> None:
    """The stock SDK's encoder -> protobuf's JSON mapping with OTLP's deviations (integer enums,
    hex ids) -> this decoder: the same message as the protobuf body."""
    request = encode_spans(make_spans(5, prefix="same"))
    request.resource_spans[0].scope_spans[0].spans[1].kind = 2
    request.resource_spans[0].scope_spans[0].spans[2].status.code = 2
    assert parse_json(json.dumps(otlp_json(request)).encode()) == request
    assert parse_protobuf(request.SerializeToString()) == request


def test_json_nesting_is_bounded_iteratively() -> None:
    depth = MAX_DEPTH  # messages: each kvlist level adds three
    value = '{"kvlistValue":{"values":[{"key":"k","value":' * depth + "{}" + "}]}}" * depth
    document = (
        '{"resourceSpans":[{"resource":{"attributes":[{"key":"a","value":' + value + "}]}}]}"
    ).encode()
    with pytest.raises(RequestRefused) as refused:
        parse_json(document)
    assert "nested deeper than 100 messages" in refused.value.reason
    assert len(refused.value.reason) < 300  # the path is shortened for the log


def test_event_window_bounds() -> None:
    settings = Settings(raw_retention_days=2, max_event_future_s=60, _env_file=None)  # type: ignore[call-arg]
    now = 1_796_300_000 * 10**9 + 123  # 2026-12-03T...
    window = EventWindow.of(settings, now)
    assert window.latest_ns == now + 60 * 10**9
    assert window.problem(now + 60 * 10**9, "t") is None
    assert "ahead" in (window.problem(now + 60 * 10**9 + 1, "t") or "")
    midnight = now // (86_400 * 10**9) * 86_400 * 10**9
    assert window.earliest_ns == midnight - 2 * 86_400 * 10**9
    assert window.problem(window.earliest_ns, "t") is None
    assert "older than raw retention (2 days)" in (window.problem(window.earliest_ns - 1, "t") or "")
