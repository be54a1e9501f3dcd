"""OTLP/HTTP request bodies, decoded exactly as the specifications say, or refused naming why.

* ``Content-Encoding: gzip`` (RFC 1952): a gzip body is a series of members (``cat a.gz b.gz`` is
  one body, as gzip tools read it); every member is decoded, each up to its trailer (CRC-32 and
  length, checked by zlib). A body that ends inside a member, or holds anything after its last
  member that is not a member (garbage, zero padding), is refused with 400. The decompressed size
  is bounded over all members together (413). Members are fed in 64 KiB slices, so a body of
  thousands of empty members costs linear time (~4 µs a member), not quadratic.
* ``application/x-protobuf``: protobuf's own parser, whose recursion limit (100 nested messages)
  refuses deeper bodies.
* ``application/json``: the proto3 JSON mapping with OTLP's deviations (OTLP specification,
  "JSON Protobuf Encoding"): ``traceId``/``spanId``/``parentSpanId`` are case-insensitive hex;
  enum fields are integers, "the enum name strings MUST NOT be used"; fields with unknown names are
  ignored. Refused with 400 naming the field: an enum given as a name, a string or a fraction
  (``"kind": "SERVER"``, ``1.5``), a ``bytesValue`` that is not base64 (standard or URL-safe, with
  or without padding, as the proto3 mapping accepts), an id that is not hex, a boolean for a
  number, any other value protobuf's JSON parser refuses (``1.5`` for an integer field), and
  nesting deeper than the protobuf limit. The text is parsed by orjson (no recursion limit of the
  interpreter involved: 1,024 levels at most, strict UTF-8, no lone surrogates), the document
  walked iteratively.

A refusal's ``reason`` names the field by its path (field names and indexes, never a value) and
may be logged; what the client sent is only echoed back to it (``quoted``).
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

# google.rpc.Code values used in error bodies.
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14

MAX_DEPTH = 100
"""Nested messages at most, JSON as protobuf (protobuf's default recursion limit)."""
GZIP_SLICE = 64 * 1024


class RequestRefused(Exception):
    """A refused request. ``reason`` names the problem and is logged; it never holds request
    data: what the client sent (``quoted``) is echoed in the response only."""

    def __init__(self, status: int, code: int, reason: str, *, quoted: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.message = reason if quoted is None else f"{reason}: {quoted}"
        self.unread = False
        """Set when the request body was not read to its end (the gateway drains it then)."""


def bad_request(reason: str, *, quoted: str | None = None) -> RequestRefused:
    return RequestRefused(400, INVALID_ARGUMENT, reason, quoted=quoted)


def too_large(what: str, limit: int) -> RequestRefused:
    return RequestRefused(413, RESOURCE_EXHAUSTED, f"{what} larger than {limit} bytes")


# --- gzip ------------------------------------------------------------------------------------------


def gunzip(data: bytes, limit: int) -> bytes:
    """Every member of a gzip body, decompressed (at most ``limit`` bytes in all)."""
    if not data:
        raise bad_request("gzip body is empty (no member)")
    view = memoryview(data)
    out = bytearray()
    position = 0
    while position < len(data):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member, trailer checked
        while not inflater.eof:
            if position >= len(data):
                raise bad_request("gzip body is truncated (its last member has no end)")
            piece = view[position : position + GZIP_SLICE]
            try:
                # Never 0 (zlib's "unbounded"): at most one byte past the limit.
                out += inflater.decompress(piece, limit + 1 - len(out))
            except zlib.error:
                raise bad_request("body is not valid gzip (bad member header, data or trailer)") from None
            if len(out) > limit:
                raise too_large("decompressed body", limit)
            position += len(piece) - len(inflater.unused_data)
    return bytes(out)


# --- protobuf ---------------------------------------------------------------------------------------


def parse_protobuf(body: bytes, message: Any = ExportTraceServiceRequest) -> Any:
    """``body`` as ``message`` (an OTLP export request: traces by default, or logs)."""
    request = message()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError):  # upb: DecodeError, including its depth limit
        raise bad_request(f"body is not an {message.__name__} (protobuf)") from None
    return request


# --- OTLP/JSON --------------------------------------------------------------------------------------

_HEX_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*")
_NUMBERS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
_INT32 = 2**31
_PARSER_PATH = re.compile(r" at Export\w+ServiceRequest\.([\w.\[\]]*\w\]?)")
_fields_cache: dict[str, dict[str, FieldDescriptor]] = {}


def _short(path: str) -> str:
    """A field path fit for a log line (a deep one keeps its start and its end)."""
    return path if len(path) <= 240 else f"{path[:100]} ... {path[-120:]}"


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by JSON name, and by proto name (the collector accepts both)."""
    fields = _fields_cache.get(descriptor.full_name)
    if fields is None:
        fields = {f.name: f for f in descriptor.fields}
        fields.update({f.json_name: f for f in descriptor.fields})
        _fields_cache[descriptor.full_name] = fields
    return fields


def _repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6; ``label`` before
    return bool(flag) if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _base64_ok(text: str) -> bool:
    core = text.rstrip("=")
    padding = len(text) - len(core)
    if not _BASE64.fullmatch(core) or len(core) % 4 == 1:
        return False
    return padding == 0 or padding == (4 - len(core) % 4) % 4


def _scalar(field: FieldDescriptor, value: Any, where: str) -> Any:
    """``value`` of a scalar field checked where protobuf's JSON parser is lenient; hex ids as base64."""
    if field.enum_type is not None:
        integral = type(value) is int or (type(value) is float and value.is_integer())
        if not integral or not -_INT32 <= value < _INT32:
            raise bad_request(
                f"{where}: an enum value must be a 32-bit integer in OTLP/JSON (names are not allowed)"
            )
        return int(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            return value  # the parser refuses it, naming the field
        if field.name in _HEX_FIELDS:
            if not _HEX.fullmatch(value):
                raise bad_request(f"{where}: not a hex-encoded id")
            return base64.b64encode(binascii.unhexlify(value)).decode()
        if not _base64_ok(value):
            raise bad_request(f"{where}: not base64")
        return value
    if field.type in _NUMBERS and isinstance(value, bool):
        raise bad_request(f"{where}: a boolean is not a number")
    return value


def _check(document: dict[str, Any], root: Descriptor) -> None:
    """Walk the document along the request's schema (iteratively), refusing what the OTLP
    mapping forbids and protobuf's parser would take, and turning hex ids into base64."""
    stack: list[tuple[dict[str, Any], Descriptor, str, int]] = [(document, root, "", 1)]
    while stack:
        node, descriptor, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise bad_request(f"{_short(path)}: nested deeper than {MAX_DEPTH} messages")
        fields = _fields(descriptor)
        for key, value in node.items():
            field = fields.get(key)
            if field is None or value is None:
                continue  # unknown names are ignored (OTLP/JSON); null is the default
            where = f"{path}.{key}" if path else key
            repeated = _repeated(field)
            if repeated and not isinstance(value, list):
                continue  # the parser refuses it, naming the field
            items = enumerate(value) if repeated else ((None, value),)
            for index, item in items:
                at = where if index is None else f"{where}[{index}]"
                if field.message_type is not None:
                    if isinstance(item, dict):
                        stack.append((item, field.message_type, at, depth + 1))
                    continue
                checked = _scalar(field, item, _short(at))
                if checked is not item:
                    if index is None:
                        node[key] = checked  # same key: the dict does not change size
                    else:
                        value[index] = checked


def parse_json(body: bytes, message: Any = ExportTraceServiceRequest) -> Any:
    """``body`` as ``message`` in OTLP/JSON (module docstring)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        deep = "depth" in str(exc)  # orjson's limit: 1024 levels
        raise bad_request("body is nested deeper than 1024 levels" if deep else "body is not JSON") from None
    if not isinstance(document, dict):
        raise bad_request("body is not a JSON object")
    _check(document, message.DESCRIPTOR)
    request = message()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True, max_recursion_depth=MAX_DEPTH)
    except Exception as exc:  # ParseError mostly; whatever the parser refuses is the client's problem
        found = _PARSER_PATH.search(str(exc))
        where = _short(found.group(1)) if found else "body"
        raise bad_request(
            f"{where}: not a valid OTLP/JSON value ({type(exc).__name__})", quoted=str(exc)[:1000]
        ) from None
    return request
