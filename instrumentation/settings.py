"""The one place where studyin-analytics reads its configuration.

Every part (instrumentation, exporter, gateway, aggregator, query API, CLI) takes a
:class:`Settings`; nothing else reads ``STUDYIN_ANALYTICS_*`` variables. Standard
``OTEL_*`` variables keep their OpenTelemetry meaning and are read by the SDK itself.

Secrets (pseudonymization keys, JWT secret, passwords inside URLs) never appear in
``repr``/``str`` of the settings or in error messages: use :func:`redact_url` when a URL
has to be named.
"""

from __future__ import annotations

import json
import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "STUDYIN_ANALYTICS_"

_URL_FIELDS = frozenset({"redis_url", "postgres_url", "aggregator_postgres_url", "api_postgres_url"})
"""Settings that may carry a password: shown only through :func:`redact_url`."""

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
JWT_SECRET_MIN_BYTES = 32


_CREDENTIAL_NAME = r"[\w.-]*(?:pass|pwd|secret|token|auth|key)[\w.-]*"
"""A parameter whose name says it is a credential (``password``, ``sslpassword``, ``access_token``,
``apikey``...). ``sslkey`` names a file, not a secret: masked all the same (the safe side)."""
_QUERY_SECRET = re.compile(rf"(?is)([?&;]{_CREDENTIAL_NAME}=)(.*?)(?=[&;][\w.-]+=|$)")
"""Its value in a URL's query: up to the next ``&name=`` (a ``#`` or space may be the secret's)."""
_KEYWORD_SECRET = re.compile(rf"(?i)((?:^|\s){_CREDENTIAL_NAME}\s*=\s*)('(?:[^'\\]|\\.|'')*'|\S*)")
"""Its value in libpq's ``keyword=value`` form: quoted (``\'`` escapes, and SQL's ``''`` to be
safe) or up to a space."""
_MASK = r"\1***"


def redact_url(url: str | None) -> str:
    """Return ``url`` with its password and credential parameters as ``***`` (safe for logs and errors).

    Written for URLs as people type them, not only well-formed ones. The userinfo's password
    runs to the last ``@``, so one with an unencoded ``@``, ``/``, ``?`` or ``#`` is masked whole;
    ``?password=...`` (libpq and redis-py take it) and libpq's ``host=... password=...`` form are
    masked too. Where the rules overlap (an ``@`` in the query) the union is masked: more than
    needed, never less.
    """
    if not url:
        return "<unset>"
    spans: list[tuple[int, int]] = []
    scheme_end = url.find("://")
    if scheme_end < 0:
        spans += [m.span(2) for m in _KEYWORD_SECRET.finditer(url)]
    else:
        start = scheme_end + 3
        at = url.rfind("@", start)
        colon = url.find(":", start, at)
        if at >= 0 and colon >= 0:
            spans.append((colon + 1, at))
        spans += [m.span(2) for m in _QUERY_SECRET.finditer(url, start)]
    merged: list[list[int]] = []
    for begin, end in sorted(spans):
        if merged and begin <= merged[-1][1]:  # overlapping or touching: one mask
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    out, position = [], 0
    for begin, end in merged:
        out += [url[position:begin], "***"]
        position = end
    return "".join(out) + url[position:]


class ConfigurationError(RuntimeError):
    """A setting is missing or unusable; the message names the variable."""


def _parse_keys(value: Any) -> Any:
    """Accept ``{"k1": "secret"}`` (JSON or dict) or ``k2=secret2,k1=secret1``."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            return json.loads(text)
        keys: dict[str, str] = {}
        for number, item in enumerate(text.split(","), 1):
            key_id, sep, secret = item.strip().partition("=")
            if not sep:  # no value quoted: this may be the tail of a secret holding a comma
                raise ValueError(
                    f"item {number}: expected 'key_id=secret[,key_id=secret...]' (a secret holding ',' "
                    "needs the JSON form)"
                )
            keys[key_id.strip()] = secret.strip()
        return keys
    return value


class _FileVariablesSource(PydanticBaseSettingsSource):
    """``STUDYIN_ANALYTICS_<FIELD>_FILE=/run/secrets/x``: the value is that file's content.

    Container platforms mount secrets as files; this keeps them out of the environment.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        path = os.environ.get(f"{ENV_PREFIX}{field_name.upper()}_FILE")
        if not path:
            return None, field_name, False
        try:
            return Path(path).read_text(encoding="utf-8").strip(), field_name, False
        except OSError as exc:
            raise ConfigurationError(
                f"{ENV_PREFIX}{field_name.upper()}_FILE: cannot read {path}: {exc.strerror}"
            ) from None

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[key] = value
        return values


class Settings(BaseSettings):
    """All settings, read from ``STUDYIN_ANALYTICS_*`` variables (and an optional ``.env``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
    )

    # --- connections -------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None, description="Redis URL of the event bus, e.g. redis://127.0.0.1:6379/0"
    )
    postgres_url: str | None = Field(
        default=None, description="PostgreSQL URL of the analytics database, e.g. postgresql://u@h/db"
    )
    redis_cluster: bool = Field(
        default=False,
        description="redis_url names a node of a Redis Cluster: the bus uses cluster clients and one "
        "hash-tagged stream per shard (set stream_shards to a few per primary)",
    )
    aggregator_postgres_url: str | None = Field(
        default=None, description="PostgreSQL URL the aggregator connects with (default: postgres_url)"
    )
    api_postgres_url: str | None = Field(
        default=None, description="PostgreSQL URL the query API connects with (default: postgres_url)"
    )
    postgres_aggregator_role: str = Field(
        default="studyin_aggregator",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Role the migration grants the aggregator's rights to (write); the aggregator SETs it",
    )
    postgres_api_role: str = Field(
        default="studyin_api",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Role the migration grants the API's rights to (read + audit insert); the API SETs it",
    )
    postgres_schema: str = Field(
        default="studyin_analytics",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Schema that holds the analytics tables",
    )

    # --- privacy -----------------------------------------------------------------------
    pseudonym_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="HMAC keys as 'k2=secret,k1=old-secret' or JSON; the active key is pseudonym_key_id",
    )
    pseudonym_key_id: str | None = Field(
        default=None, description="Id of the key used for new pseudonyms (default: the first key listed)"
    )

    # --- ASGI instrumentation (zero-code and instrument_app defaults) ---------------------
    auth_paths: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        default=None,
        description="Comma-separated regexes of authentication paths: measured, never attributed "
        "to a user (default: login, logout, token, register, signup, password, oauth, sso, mfa, /auth/)",
    )
    metrics_only_paths: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated regexes of hot paths that get only the latency histogram, no span",
    )
    user_id_hook: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="'module:function' taking the ASGI scope and returning the authenticated user id "
        "(default: scope['state']['user_id'] or Starlette's scope['user'].identity)",
    )
    access_log: Literal["route", "path", "off"] = Field(
        default="route",
        description="What the ASGI server's access log (uvicorn.access) keeps of a request, client address "
        "and query string always removed: 'route' logs the route template, 'path' the path with e-mails "
        "scrubbed (ids in paths stay), 'off' leaves the log untouched",
    )

    # --- bus -----------------------------------------------------------------------------
    stream_prefix: str = Field(
        default="studyin:analytics", min_length=1, description="Prefix of every Redis key of the bus"
    )
    stream_shards: int = Field(default=1, ge=1, le=1024, description="Number of stream keys (by user hash)")
    retention_days: float = Field(default=7.0, gt=0, description="Bus retention (approximate MINID trim)")
    stream_max_len: int = Field(default=2_000_000, ge=1000, description="Hard cap on entries per stream key")
    spool_dir: Path | None = Field(default=None, description="On-disk spool for batches Redis did not take")
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0, description="Bound of the spool")
    export_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one export call")
    export_retry_s: float = Field(
        default=2.0,
        ge=0,
        description="Time one export spends retrying Redis before spooling (within export_timeout_s)",
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Replicas a bus write must reach (Redis WAIT) to count as written: the exporter "
        "spools and the gateway answers 503 otherwise, so a failover loses none (0: no WAIT)",
    )
    redis_wait_timeout_ms: int = Field(
        default=500,
        ge=1,
        le=4000,  # below the writers' 5 s socket timeout
        description="How long a bus write waits for redis_wait_replicas",
    )

    # --- aggregator ----------------------------------------------------------------------
    consumer_group: str = Field(
        default="aggregator", min_length=1, description="Consumer group of the aggregators"
    )
    consumer_name: str = Field(
        default_factory=socket.gethostname, min_length=1, description="Stable name of this consumer"
    )
    consumer_shards: str | None = Field(
        default=None,
        pattern=r"^\s*(\d+\s*/\s*\d+|\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*)\s*$",
        description="Shards this aggregator reads first, as 'i/n' (every shard s with s % n == i) or "
        "'0,2-3'; other shards only while no member that owns them is alive (default: all)",
    )
    batch_size: int = Field(default=2000, ge=1, le=100_000, description="Stream entries per read")
    raw_retention_days: int = Field(default=90, ge=1, description="Days of raw events kept in Postgres")
    max_delivery_attempts: int = Field(default=5, ge=1, description="Attempts before dead-lettering")
    max_event_future_s: int = Field(
        default=600,
        ge=0,
        le=86_400,
        description="Clock skew allowed: events timed later than this after the receiver's clock are "
        "refused (gateway: partial success) or dead-lettered (aggregator)",
    )
    claim_idle_ms: int = Field(
        default=30_000,
        ge=100,
        description="A member silent this long (no heartbeat) is gone: others claim its pending "
        "entries and adopt its shards",
    )
    aggregator_health_host: str = Field(default="127.0.0.1", description="Aggregator health endpoint address")
    aggregator_health_port: int = Field(
        default=8002, ge=0, le=65535, description="Aggregator health endpoint port (0: disabled)"
    )

    # --- operation ----------------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        default="text", description="Service logs: 'text' for people, 'json' lines for log pipelines"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = Field(
        default=None, description="Log level (default: INFO for services, WARNING for one-shot commands)"
    )

    # --- HTTP services ---------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Query API bind address")
    api_port: int = Field(default=8000, ge=0, le=65535, description="Query API port")
    gateway_host: str = Field(default="127.0.0.1", description="OTLP/HTTP gateway bind address")
    gateway_port: int = Field(
        default=4328, ge=0, le=65535, description="OTLP/HTTP gateway port (not 4317/4318: the collector's)"
    )
    gateway_max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest OTLP request the gateway takes, compressed and decompressed (413 beyond)",
    )
    gateway_retry_after_s: int = Field(
        default=2, ge=1, le=300, description="Retry-After of the gateway's 503 while Redis is unreachable"
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret for query API tokens (at least 32 bytes)"
    )
    jwt_public_key: str | None = Field(default=None, description="RS256 public key (PEM) for tokens")
    jwt_audience: str = Field(default="studyin-analytics", description="Required `aud` of API tokens")
    jwt_issuer: str = Field(default="studyin", description="Required `iss` of API tokens")
    staff_role: str = Field(default="staff", description="Role claim value that grants staff views")
    min_cohort_size: int = Field(
        default=5,
        ge=2,
        le=1000,
        description="Funnels and retention: a cell counting fewer learners (1 to k-1) is suppressed",
    )
    analysis_breakdown_limit: int = Field(
        default=20,
        ge=1,
        le=100,
        description="Funnels: breakdown values shown at most (the rest as '(other)')",
    )
    api_max_body_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body the query API reads",
    )
    client_session_max_s: float = Field(
        default=8 * 3600.0,
        gt=0,
        le=7 * 24 * 3600.0,
        description="Longest session duration_s a client may report through /events/track (longer: the "
        "item is rejected); study time is also bounded by the session's recorded span",
    )
    live_feeds_per_user: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Open /live feeds one learner (or staff member) may hold (429 beyond)",
    )
    live_feeds_total: int = Field(
        default=500, ge=1, le=100_000, description="Open /live feeds of one query API process (503 beyond)"
    )
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Query API and OTLP gateway: time a client has to send a request's headers (the "
        "connection is closed beyond)",
    )
    http_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Query API and OTLP gateway: time a client has to send a request's body (408 beyond)",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, variables, *_FILE variables, .env.
        return (init_settings, env_settings, _FileVariablesSource(settings_cls), dotenv_settings)

    @field_validator("auth_paths", "metrics_only_paths", mode="before")
    @classmethod
    def _patterns_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("auth_paths", "metrics_only_paths")
    @classmethod
    def _check_patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression ({exc.msg})") from None
        return value

    @field_validator("pseudonym_keys", mode="before")
    @classmethod
    def _keys_from_text(cls, value: Any) -> Any:
        return _parse_keys(value)

    @field_validator("pseudonym_keys")
    @classmethod
    def _check_keys(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # Keys are named by position, never by id: in 'k1=sec,ret-part' a comma inside a
        # secret makes part of it look like a key id, and an error must not print it.
        for number, (key_id, secret) in enumerate(value.items(), 1):
            if not _KEY_ID.match(key_id):
                raise ValueError(
                    f"key {number} of {len(value)}: its id must be 1-16 of [A-Za-z0-9_-] (a secret "
                    "holding ',' or '=' splits the 'id=secret,...' form: use the JSON form)"
                )
            if len(secret.get_secret_value()) < 16:
                raise ValueError(f"key {number} of {len(value)} is shorter than 16 characters")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # PyJWT warns below the hash's size (32 bytes for HS256), as plain text on stderr:
        # a short secret is refused here instead, by name.
        if value is not None and len(value.get_secret_value().encode()) < JWT_SECRET_MIN_BYTES:
            raise ValueError(
                f"must be at least {JWT_SECRET_MIN_BYTES} bytes for HS256 (an HMAC-SHA256 key shorter "
                "than the hash can be brute-forced; PyJWT's own minimum), e.g. `openssl rand -base64 48`"
            )
        return value

    @model_validator(mode="after")
    def _check_consumer_shards(self) -> Settings:
        if self.consumer_shards is not None:
            self.preferred_shards  # noqa: B018  (raises ValueError naming the problem)
        return self

    @property
    def preferred_shards(self) -> tuple[int, ...]:
        """Indexes of the shards this aggregator reads first (``consumer_shards``; all by default).

        Members with disjoint preferred shards aggregate disjoint learners, so their
        transactions never wait on each other's rollup rows (see docs/aggregator.md).
        """
        everything = tuple(range(self.stream_shards))
        text = (self.consumer_shards or "").replace(" ", "")
        if not text:
            return everything
        if "/" in text:
            index, count = (int(part) for part in text.split("/"))
            if count < 1 or index >= count:
                raise ValueError(f"consumer_shards '{text}': expected i/n with 0 <= i < n")
            chosen = tuple(shard for shard in everything if shard % count == index)
        else:
            picked: set[int] = set()
            for item in text.split(","):
                low, _, high = item.partition("-")
                picked.update(range(int(low), int(high or low) + 1))
            chosen = tuple(sorted(picked))
            if chosen and chosen[-1] >= self.stream_shards:
                raise ValueError(
                    f"consumer_shards '{text}' names shard {chosen[-1]}, "
                    f"but stream_shards is {self.stream_shards}"
                )
        if not chosen:
            raise ValueError(f"consumer_shards '{text}' selects none of the {self.stream_shards} shards")
        return chosen

    @model_validator(mode="after")
    def _check_active_key(self) -> Settings:
        if self.pseudonym_key_id is not None and self.pseudonym_key_id not in self.pseudonym_keys:
            raise ValueError(f"pseudonym_key_id {self.pseudonym_key_id!r} is not among pseudonym_keys")
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in _URL_FIELDS and isinstance(value, str):
                yield name, redact_url(value)
            else:
                yield name, value

    def with_overrides(self, **changes: Any) -> Settings:
        """A validated copy with some fields changed (used by the CLI and tests)."""
        data = self.model_dump()
        data.update(changes)
        return type(self).model_validate(data)

    def environment(self, *fields: str) -> dict[str, str]:
        """The ``STUDYIN_ANALYTICS_*`` variables that give a subprocess (a service started by a
        test, benchmark or tool) these settings' ``fields``; by default where the bus and the
        analytics tables are. Fields that are unset are left out."""
        names = fields or (
            "redis_url",
            "redis_cluster",
            "stream_prefix",
            "stream_shards",
            "postgres_url",
            "postgres_schema",
        )
        out: dict[str, str] = {}
        for name in names:
            value = getattr(self, name)
            if value is None or value == {}:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, dict):  # pseudonym_keys: 'k2=secret,k1=old-secret'
                text = ",".join(f"{key}={secret.get_secret_value()}" for key, secret in value.items())
            else:
                text = str(value)
            out[f"{ENV_PREFIX}{name.upper()}"] = text
        return out

    @property
    def active_key_id(self) -> str | None:
        if self.pseudonym_key_id is not None:
            return self.pseudonym_key_id
        return next(iter(self.pseudonym_keys), None)


def require(value: Any, field: str) -> Any:
    """Return ``value`` or raise a :class:`ConfigurationError` naming the variable to set."""
    if value is None or value == {}:
        raise ConfigurationError(f"{ENV_PREFIX}{field.upper()} is not set")
    return value


def load_settings() -> Settings:
    """Settings from the environment; invalid values raise :class:`ConfigurationError` naming each variable.

    The commands' entry point: the message lists ``STUDYIN_ANALYTICS_<FIELD>: reason`` and never the value.
    """
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        fields = "; ".join(
            # A check across fields (loc empty) names its fields in the message itself.
            f"{ENV_PREFIX}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {fields}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process (the entry-point path)."""
    return Settings()
