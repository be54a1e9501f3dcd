"""What every settings class of studyin-analytics shares: the ``STUDYIN_ANALYTICS_`` prefix, the
``*_FILE`` twins, masked secrets, one-line errors naming the variable.

The fields live in *groups* (:mod:`.settings` for an app, ``exporter/settings.py`` for the bus,
``aggregator/storage/settings.py`` for PostgreSQL...), each defined once; a service's settings class
inherits the groups it needs (see docs/architecture.md, "Settings"). Standard ``OTEL_*`` variables
keep their OpenTelemetry meaning and are read by the SDK itself.

``.env``: a class reads one only when its ``model_config`` names it (the services' classes do:
``.env`` in the working directory, as the CLI always did), when the caller passes ``_env_file=...``,
or when ``STUDYIN_ANALYTICS_DOTENV=<path>`` is set (the opt-in for a library imported by an
application, zero-code instrumentation included). A library therefore reads no ``.env`` of the
application's working directory unless asked to.

Secrets (pseudonymization keys, JWT secret, passwords inside URLs) never appear in
``repr``/``str`` of the settings or in error messages: use :func:`redact_url` when a URL
has to be named.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "STUDYIN_ANALYTICS_"

DOTENV_VARIABLE = f"{ENV_PREFIX}DOTENV"
"""``STUDYIN_ANALYTICS_DOTENV=.env``: the explicit opt-in for classes that read no ``.env`` by default."""

_CREDENTIAL_NAME = r"[\w.-]*(?:pass|pwd|secret|token|auth|key)[\w.-]*"
"""A parameter whose name says it is a credential (``password``, ``sslpassword``, ``access_token``,
``apikey``...). ``sslkey`` names a file, not a secret: masked all the same (the safe side)."""
_QUERY_SECRET = re.compile(rf"(?is)([?&;]{_CREDENTIAL_NAME}=)(.*?)(?=[&;][\w.-]+=|$)")
"""Its value in a URL's query: up to the next ``&name=`` (a ``#`` or space may be the secret's)."""
_KEYWORD_SECRET = re.compile(rf"(?i)((?:^|\s){_CREDENTIAL_NAME}\s*=\s*)('(?:[^'\\]|\\.|'')*'|\S*)")
"""Its value in libpq's ``keyword=value`` form: quoted (``\'`` escapes, and SQL's ``''`` to be
safe) or up to a space."""


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


def require(value: Any, field: str) -> Any:
    """Return ``value`` or raise a :class:`ConfigurationError` naming the variable to set."""
    if value is None or value == {}:
        raise ConfigurationError(f"{ENV_PREFIX}{field.upper()} is not set")
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


class StudyInSettings(BaseSettings):
    """The base of every settings class: ``STUDYIN_ANALYTICS_*`` variables and their ``*_FILE`` twins.

    Reads no ``.env`` unless the subclass's ``model_config`` names one, the caller passes
    ``_env_file``, or ``STUDYIN_ANALYTICS_DOTENV`` names one (module docstring).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
    )

    URL_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"redis_url", "postgres_url", "aggregator_postgres_url", "api_postgres_url"}
    )
    """Settings that may carry a password: shown only through :func:`redact_url`."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        opted_in = os.environ.get(DOTENV_VARIABLE)
        if opted_in and isinstance(dotenv_settings, DotEnvSettingsSource) and not dotenv_settings.env_file:
            dotenv_settings = DotEnvSettingsSource(settings_cls, env_file=opted_in)
        # Precedence: explicit arguments, variables, *_FILE variables, .env.
        return (init_settings, env_settings, _FileVariablesSource(settings_cls), dotenv_settings)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in self.URL_FIELDS and isinstance(value, str):
                yield name, redact_url(value)
            else:
                yield name, value

    @classmethod
    def load(cls) -> Self:
        """Settings from the environment; invalid values raise :class:`ConfigurationError` naming each
        variable (``STUDYIN_ANALYTICS_<FIELD>: reason``, never the value). The commands' entry point."""
        try:
            return cls()
        except ValidationError as exc:
            fields = "; ".join(
                # A check across fields (loc empty) names its fields in the message itself.
                f"{ENV_PREFIX}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                if e["loc"]
                else e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise ConfigurationError(f"invalid settings: {fields}") from None

    def with_overrides(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (used by the CLI and tests)."""
        data = self.model_dump()
        data.update(changes)
        return type(self).model_validate(data)

    def environment(self, *fields: str) -> dict[str, str]:
        """The ``STUDYIN_ANALYTICS_*`` variables that give a subprocess (a service started by a
        test, benchmark or tool) these settings' ``fields``; by default where the bus and the
        analytics tables are (those of them this class has). Fields that are unset are left out."""
        names = fields or tuple(
            name
            for name in (
                "redis_url",
                "redis_cluster",
                "stream_prefix",
                "stream_shards",
                "postgres_url",
                "postgres_schema",
                "postgres_schema_variant",
            )
            if name in type(self).model_fields
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
