"""Privacy rules of studyin-analytics: the one module that decides what may leave a process.

* :class:`Pseudonymizer` turns a StudyIn user id into ``<key id>:<32 hex>``, the first 32 hex characters
  (128 bits) of HMAC-SHA256(key, ``str(user_id)`` as UTF-8) (``user.hash``; with an LRS key of its own
  also ``user.lrs_hash``, the only other identity attribute allowed out). The key comes from settings;
  the key id travels with the pseudonym so keys can rotate, and a pseudonym can be verified against
  every configured key. A bare hash of an id would be enumerable; an HMAC without the key is not.
* :class:`PrivacyGuard` cleans span attributes before any exporter sees them: identity
  attributes are hashed or dropped, client addresses, query strings, credentials and
  headers are dropped, e-mail-like values are scrubbed, undeclared ``studyin.*`` attributes
  are rejected; exceptions keep ``exception.type`` only (``exception.message``,
  ``exception.stacktrace`` and the message part of a status description are dropped, being
  free text that can quote ids or e-mails). The Redis exporter, the OTLP gateway and
  :class:`GuardedSpanExporter` (for any other exporter) all apply it.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status

from . import semconv
from .custom_schemas import RegistrySource, allow_custom, default_registry
from .emails import scrub_emails
from .hmac_sha256 import HmacSha256
from .settings import ConfigurationError, PseudonymKeySettings

_log = logging.getLogger(__name__)

_DIGEST_HEX_CHARS = 32  # 128 bits: collision-free for any realistic user count, half the bytes
PSEUDONYM_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,16}:[0-9a-f]{32}$")
_STATUS_TYPE = re.compile(r"^([A-Za-z_][\w.]{0,127})(?::|$)")
MAX_VALUE_DEPTH = 16
"""Arrays and kvlists nested deeper than this are dropped: no telemetry needs more, and the guard
must not recurse without bound (a self-containing list, or a hostile OTLP body)."""


class Pseudonymizer:
    """Keyed, rotatable pseudonyms for user identifiers. A key rotation is a new pseudonymizer: the active
    key is fixed for the life of one, so its cache of recent pseudonyms (in process memory) is that key's."""

    previous_key_id: str | None = None
    """A key rotation's transition only: the retired key of ``user.previous_hash`` (:meth:`link`)."""

    def __init__(
        self, keys: Mapping[str, bytes], active_key_id: str, *, lrs: Pseudonymizer | None = None
    ) -> None:
        if not keys:
            raise ConfigurationError("no pseudonymization key configured")
        if active_key_id not in keys:
            raise ConfigurationError(f"active key id {active_key_id!r} is not configured")
        self._keys = dict(keys)
        self._hmacs = {kid: HmacSha256(bytes(key)) for kid, key in self._keys.items()}
        self._active_key_id = active_key_id
        self._active = self._hmacs[active_key_id]
        self._prefix = f"{active_key_id}:"
        self.lrs = lrs
        """The LRS pseudonymizer (its own keys), when one is configured: gives ``user.lrs_hash``."""
        # Ids repeat constantly (one user, many events): cache the HMAC per process (bounded, LRU).
        self.pseudonymize = lru_cache(maxsize=65536)(self._pseudonymize)

    @property
    def active_key_id(self) -> str:  # read-only: rotating keys is a new pseudonymizer
        return self._active_key_id

    @classmethod
    def from_settings(cls, settings: PseudonymKeySettings) -> Pseudonymizer:
        key_id = settings.active_key_id
        if key_id is None:
            raise ConfigurationError(
                "STUDYIN_ANALYTICS_PSEUDONYM_KEYS is not set: user ids cannot be pseudonymized"
            )
        keys = {kid: secret.get_secret_value().encode() for kid, secret in settings.pseudonym_keys.items()}
        lrs_key_id = settings.active_lrs_key_id
        lrs = None
        if lrs_key_id is not None:
            lrs_keys = {k: s.get_secret_value().encode() for k, s in settings.lrs_pseudonym_keys.items()}
            lrs = cls(lrs_keys, lrs_key_id)
        pseudonymizer = cls(keys, key_id, lrs=lrs)
        pseudonymizer.previous_key_id = settings.pseudonym_previous_key_id  # checked by the settings
        return pseudonymizer

    def lrs_pseudonymize(self, user_id: str | int) -> str | None:
        """``user_id``'s LRS pseudonym (``user.lrs_hash``), or ``None`` without an LRS key."""
        return None if self.lrs is None else self.lrs.pseudonymize(str(user_id))

    def link(self, user_id: str | int | None) -> dict[str, str]:
        """``{user.previous_hash: <pseudonym under the retired key>}`` during a key rotation's transition
        (:attr:`previous_key_id`), else nothing (docs/analytics.md, "Key rotation")."""
        kid = self.previous_key_id
        if kid is None or user_id is None:
            return {}
        return {USER_PREVIOUS_HASH: self._under(kid, str(user_id).encode())}

    def identity(self, user_id: str | int) -> dict[str, str]:
        """The identity attributes of ``user_id``: ``user.hash``, and ``user.lrs_hash`` with an LRS key."""
        out = {USER_HASH: self.pseudonymize(str(user_id))}
        if self.lrs is not None:
            out[USER_LRS_HASH] = self.lrs.pseudonymize(str(user_id))
        return out

    def _pseudonymize(self, user_id: str | int) -> str:
        return self._prefix + self._active.hexdigest(str(user_id).encode())[:_DIGEST_HEX_CHARS]

    def _under(self, key_id: str, raw: bytes) -> str:
        return f"{key_id}:{self._hmacs[key_id].hexdigest(raw)[:_DIGEST_HEX_CHARS]}"

    def pseudonyms(self, user_id: str | int) -> list[str]:
        """The pseudonyms of ``user_id`` under every configured key (active key first).

        Rows written before a key rotation carry the old key id; queries look for all of these.
        """
        raw = str(user_id).encode()
        active = self._active_key_id
        return [self._under(kid, raw) for kid in [active, *(k for k in self._keys if k != active)]]

    def verify(self, pseudonym: str, user_id: str | int) -> bool:
        """True if ``pseudonym`` belongs to ``user_id`` under any configured key."""
        key_id, _, digest = pseudonym.partition(":")
        keyed = self._hmacs.get(key_id)
        if keyed is None:
            return False
        expected = keyed.hexdigest(str(user_id).encode())[:_DIGEST_HEX_CHARS]
        return hmac.compare_digest(expected, digest)


def is_pseudonym(value: object) -> bool:
    return isinstance(value, str) and PSEUDONYM_PATTERN.match(value) is not None


# --- what the guard removes -----------------------------------------------------------------

IDENTITY_ATTRIBUTES = frozenset({"user.id", "enduser.id", "enduser.pseudo.id"})
"""Raw identifiers: hashed into ``user.hash`` (and ``user.lrs_hash`` under an LRS key) when a
pseudonymizer is at hand, else dropped."""

DROPPED_ATTRIBUTES = frozenset(
    {
        "user.email",
        "user.name",
        "user.full_name",
        "user.roles",
        "enduser.role",
        "enduser.scope",
        "client.address",
        "client.port",
        "client.socket.address",
        "source.address",
        "network.peer.address",
        "network.peer.port",
        "net.peer.ip",
        "net.peer.name",
        "net.peer.port",
        "net.sock.peer.addr",
        "net.sock.peer.port",
        "http.client_ip",
        "http.user_agent",
        "user_agent.original",
        "url.query",
        "http.request.header.authorization",
        "http.request.header.cookie",
        "http.request.header.x_api_key",
        "http.response.header.set_cookie",
        "session.id",  # an app's web session id is a bearer secret, not a learning session
        # Exceptions keep their type only: messages and stack traces are free text that can
        # quote ids, e-mails or request data (``str(exc)``, locals in frames, chained causes).
        "exception.message",
        "exception.stacktrace",
    }
)
"""Attributes that never leave the process."""

_DROPPED_PREFIXES = ("http.request.header.", "http.response.header.", "rpc.request.metadata.")
URL_ATTRIBUTES = frozenset({"url.full", "http.url", "http.target", "url.path", "http.route"})
"""Attributes holding a URL or path: their query string and fragment are cut off."""


@dataclass
class GuardStats:
    """Counts of what the guard removed (never the values)."""

    hashed: int = 0
    dropped: int = 0
    scrubbed: int = 0
    rejected_undeclared: int = 0
    rejected_type: int = 0
    """Declared ``studyin.*`` attributes whose value had another type than the declared one."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, hashed: int, dropped: int, scrubbed: int, rejected: int, mistyped: int = 0) -> None:
        with self._lock:
            self.hashed += hashed
            self.dropped += dropped
            self.scrubbed += scrubbed
            self.rejected_undeclared += rejected
            self.rejected_type += mistyped


def _strip_query(value: str) -> str:
    cut = len(value)
    for mark in ("?", "#"):
        pos = value.find(mark)
        if pos != -1 and pos < cut:
            cut = pos
    return value[:cut]


def _scrub(value: str) -> str:
    return scrub_emails(value) if ("@" in value or "%" in value) else value


strip_query = _strip_query


# What the rules say about a key. _KEEP and _KEEP_URL come first: the common case is one compare.
_KEEP, _KEEP_URL, _STRING, _INT, _DOUBLE, _STRINGS, _USER_HASH, _IDENTITY, _DROP, _REJECT, _CUSTOM = range(11)
_DECLARED_ACTIONS = {
    semconv.AttributeType.STRING: _STRING,
    semconv.AttributeType.INT: _INT,
    semconv.AttributeType.DOUBLE: _DOUBLE,
    semconv.AttributeType.STRING_ARRAY: _STRINGS,
}
_KEY_ACTIONS: dict[str, int] = {}
"""What the rules say about each attribute key seen so far (they depend on the key alone): one dict
lookup per attribute on the export path instead of several set lookups and prefix tests."""
_KEY_ACTIONS_MAX = 4096
_SCALARS = frozenset({bool, int, float, type(None)})
"""Value types that cannot hold text: kept as they are without further tests."""
_NUMBERS = frozenset({int, float})
_DROPPED: Any = object()
"""What :meth:`PrivacyGuard._clean_value` returns for a value that goes."""


def _classify_key(key: Any) -> int:
    if not isinstance(key, str):  # OTLP keys are strings; a hand-built mapping may hold others
        return _DROP
    if key in IDENTITY_ATTRIBUTES:
        action = _IDENTITY
    elif key in DROPPED_ATTRIBUTES or key.startswith(_DROPPED_PREFIXES) or _scrub(key) != key:
        action = _DROP  # listed, or a key that holds an e-mail address: the name itself is data
    elif key in (semconv.USER_HASH, semconv.USER_LRS_HASH, USER_PREVIOUS_HASH):  # pseudonyms, or nothing
        action = _USER_HASH
    elif key.startswith(semconv.CUSTOM_NAMESPACE):  # as the registered schema declares (allow_custom)
        action = _CUSTOM
    elif key.startswith(semconv.NAMESPACE):
        declared = semconv.ATTRIBUTE_TYPES.get(key)
        action = _REJECT if declared is None else _DECLARED_ACTIONS[declared]
    else:
        action = _KEEP_URL if key in URL_ATTRIBUTES else _KEEP
    if len(_KEY_ACTIONS) < _KEY_ACTIONS_MAX:  # bounded: keys are code, but a misuse must not grow it
        _KEY_ACTIONS[key] = action
    return action


class PrivacyGuard:
    """Cleans attribute mappings; see the module docstring for the rules."""

    def __init__(
        self, pseudonymizer: Pseudonymizer | None = None, custom_registry: RegistrySource = default_registry
    ) -> None:
        self.pseudonymizer = pseudonymizer
        self.custom_registry = custom_registry
        self.stats = GuardStats()

    def clean(self, attributes: Mapping[str, Any] | None, depth: int = 0) -> dict[str, Any]:
        """A cleaned copy of ``attributes``; the input is not changed.

        ``depth`` is how deep ``attributes`` is nested in another value (a kvlist inside an
        attribute is cleaned by the same rules, one level deeper).
        """
        out: dict[str, Any] = {}
        if not attributes:
            return out
        hashed = dropped = scrubbed = rejected = mistyped = 0
        custom: dict[str, Any] | None = None
        for key, value in attributes.items():
            action = _KEY_ACTIONS.get(key)
            if action is None:
                action = _classify_key(key)
            if action <= _KEEP_URL:  # _KEEP or _KEEP_URL: the common case first
                if type(value) is str:
                    if action == _KEEP_URL and ("?" in value or "#" in value):
                        value = _strip_query(value)
                    if "@" in value or "%" in value:
                        cleaned = scrub_emails(value)
                        if cleaned != value:
                            scrubbed += 1
                            value = cleaned
                elif type(value) not in _SCALARS:
                    value = self._clean_value(value, action == _KEEP_URL, depth + 1)
                    if value is _DROPPED:
                        dropped += 1
                        continue
                out[key] = value
            elif action == _STRING and type(value) is str:  # declared attributes of their type: inline
                if "@" in value or "%" in value:
                    cleaned = scrub_emails(value)
                    if cleaned != value:
                        scrubbed += 1
                        value = cleaned
                out[key] = value
            elif (action == _DOUBLE and type(value) in _NUMBERS) or (action == _INT and type(value) is int):
                out[key] = value
            elif action <= _STRINGS:  # a declared studyin.* attribute: its declared type, or nothing
                typed = _typed(value, action)
                if typed is _DROPPED:
                    mistyped += 1
                    continue
                if typed is not value:
                    scrubbed += 1
                out[key] = typed
            elif action == _USER_HASH:
                if _valid_pseudonym(value) if type(value) is str and len(value) < 50 else is_pseudonym(value):
                    out[key] = value
                else:  # a raw id put in the wrong place
                    dropped += 1
            elif action == _IDENTITY:
                if (
                    self.pseudonymizer is not None
                    and USER_HASH not in attributes
                    and isinstance(value, str | int)
                    and not isinstance(value, bool)
                ):
                    out[USER_HASH] = self.pseudonymizer.pseudonymize(str(value))
                    hashed += 1
                    if self.pseudonymizer.lrs is not None and USER_LRS_HASH not in attributes:
                        out[USER_LRS_HASH] = self.pseudonymizer.lrs.pseudonymize(str(value))
                    if USER_PREVIOUS_HASH not in attributes:
                        out.update(self.pseudonymizer.link(value))
                else:  # no key to hash with, or not an id (a list, a kvlist...)
                    dropped += 1
            elif action == _DROP:
                dropped += 1
            elif action == _CUSTOM:
                custom = {} if custom is None else custom
                custom[key] = value
            else:
                rejected += 1
        if custom is not None:
            pseudonymize = None if self.pseudonymizer is None else self.pseudonymizer.pseudonymize
            rejected += allow_custom(self.custom_registry(), custom, out, pseudonymize, is_pseudonym, _scrub)
        if hashed or dropped or scrubbed or rejected or mistyped:
            self.stats.add(hashed, dropped, scrubbed, rejected, mistyped)
        return out

    def _clean_value(self, value: Any, url: bool, depth: int) -> Any:
        """A nested value cleaned by the top-level rules, or ``_DROPPED``.

        Strings are scrubbed (and cut at ``?``/``#`` under a URL key), kvlists are cleaned like
        attribute maps (identity keys hashed or dropped, listed keys dropped...), arrays item by
        item. Bytes are dropped: they are opaque (UTF-16, compressed or base64 text hides an
        address from any scrubber) and nothing downstream reads them. So is anything OTLP cannot
        express, and anything nested deeper than :data:`MAX_VALUE_DEPTH`.
        """
        if depth > MAX_VALUE_DEPTH:
            return _DROPPED
        if isinstance(value, str):
            text = _strip_query(value) if url else value
            cleaned = _scrub(text)
            if cleaned != value:
                self.stats.add(0, 0, 1, 0)
            return cleaned
        if type(value) in _SCALARS or isinstance(value, int | float):
            return value
        if isinstance(value, Mapping):
            return self.clean(value, depth)
        if isinstance(value, list | tuple) or (
            isinstance(value, Sequence) and not isinstance(value, bytes | bytearray | memoryview)
        ):
            items: list[Any] = []
            for item in value:
                cleaned_item = self._clean_value(item, url, depth + 1)
                if cleaned_item is _DROPPED:
                    self.stats.add(0, 1, 0, 0)
                else:
                    items.append(cleaned_item)
            return items
        return _DROPPED

    def clean_name(self, name: str) -> str:
        """Span and event names may hold a raw path in badly instrumented code: cut queries, scrub."""
        if "?" in name or "#" in name or "@" in name or "%" in name:
            return scrub_emails(_strip_query(name))
        return name

    def clean_status_description(self, description: str | None) -> str | None:
        """Keep only a leading error type (``ValueError: <message>`` -> ``ValueError``).

        ``use_span``/``start_as_current_span`` set the description to ``"Type: message"``; the
        message is free text, so it goes, like ``exception.message``.
        """
        if not description:
            return None
        match = _STATUS_TYPE.match(description)
        return match.group(1) if match else None


def _typed(value: Any, action: int) -> Any:
    """``value`` if it has the declared type of a ``_STRING``/``_INT``/``_DOUBLE``/``_STRINGS`` key
    (strings scrubbed; a new object only when something was scrubbed), else ``_DROPPED``."""
    kind = type(value)
    if action == _STRING:
        return _scrub(value) if isinstance(value, str) else _DROPPED
    if action == _INT:
        return value if kind is int or (isinstance(value, int) and kind is not bool) else _DROPPED
    if action == _DOUBLE:
        if kind is float or kind is int or (isinstance(value, int | float) and kind is not bool):
            return value
        return _DROPPED
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        return _DROPPED
    items = [_scrub(item) for item in value]
    return value if all(a is b for a, b in zip(items, value, strict=True)) else items


_valid_pseudonym = lru_cache(maxsize=65536)(is_pseudonym)  # values < 50 chars only (see clean): bounded
USER_HASH = semconv.USER_HASH
USER_LRS_HASH = semconv.USER_LRS_HASH
USER_PREVIOUS_HASH = semconv.USER_PREVIOUS_HASH


def check_declared(attributes: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the first undeclared ``studyin.*`` attribute (used at set time)."""
    for key in attributes:
        if key.startswith(semconv.NAMESPACE) and key not in semconv.DECLARED_ATTRIBUTES:
            raise ValueError(f"attribute {key!r} is not declared in studyin_analytics semconv")


# --- a guard for any exporter -----------------------------------------------------------------


class GuardedSpanExporter(SpanExporter):
    """Wraps any ``SpanExporter`` (OTLP, console...) so it only ever sees cleaned spans.

    Since SDK 1.43 a finished span's attributes are frozen before ``on_end``, so the guard
    cannot edit spans in a processor; this exporter builds new ``ReadableSpan`` objects with
    cleaned name, attributes, events, links, resource and status description, and hands
    those to ``inner``. The Redis exporter applies the same :class:`PrivacyGuard` itself.
    """

    def __init__(self, inner: SpanExporter, guard: PrivacyGuard | None = None) -> None:
        self.inner = inner
        self.guard = guard or PrivacyGuard()
        self._resources: dict[int, tuple[Resource, Resource]] = {}

    def _resource(self, resource: Resource) -> Resource:
        cached = self._resources.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1]
        cleaned = Resource(self.guard.clean(resource.attributes), resource.schema_url)
        if len(self._resources) > 64:
            self._resources.clear()
        self._resources[id(resource)] = (resource, cleaned)
        return cleaned

    def guard_span(self, span: ReadableSpan) -> ReadableSpan:
        guard = self.guard
        clean = guard.clean
        status = span.status
        description = guard.clean_status_description(status.description)
        if description != status.description:
            status = Status(status.status_code, description)
        return ReadableSpan(
            name=guard.clean_name(span.name),
            context=span.context,
            parent=span.parent,
            resource=self._resource(span.resource),
            attributes=clean(span.attributes),
            events=[
                Event(guard.clean_name(event.name), clean(event.attributes), event.timestamp)
                for event in span.events
            ],
            links=[Link(link.context, clean(link.attributes)) for link in span.links],
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([self.guard_span(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
