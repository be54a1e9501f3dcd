"""The settings an application's instrumentation needs: pseudonymization keys and the ASGI options.

The base (``STUDYIN_ANALYTICS_`` prefix, ``*_FILE`` twins, masked secrets) is :mod:`.settings_base`;
each service's settings live in its own folder (``exporter/settings.py``, ``exporter/gateway/settings.py``,
``aggregator/consumer/settings.py``, ``aggregator/api/settings.py``; the CLI's, every service's at once,
in ``aggregator/cli/settings.py``). A library imported by an application reads no ``.env``:
``STUDYIN_ANALYTICS_DOTENV=.env`` (or ``InstrumentationSettings(_env_file=".env")``) asks for one.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from .settings_base import (
    DOTENV_VARIABLE,
    ENV_PREFIX,
    ConfigurationError,
    StudyInSettings,
    redact_url,
    require,
)

__all__ = [
    "DOTENV_VARIABLE",
    "ENV_PREFIX",
    "AsgiSettings",
    "ConfigurationError",
    "InstrumentationSettings",
    "PseudonymKeySettings",
    "Settings",
    "StudyInSettings",
    "get_settings",
    "load_settings",
    "redact_url",
    "require",
]

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


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


class PseudonymKeySettings(StudyInSettings):
    """Group: the HMAC keys of ``user.hash`` pseudonyms (apps, the gateway, the query API)."""

    pseudonym_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="HMAC keys as 'k2=secret,k1=old-secret' or JSON; the active key is pseudonym_key_id",
    )
    pseudonym_key_id: str | None = Field(
        default=None, description="Id of the key used for new pseudonyms (default: the first key listed)"
    )
    pseudonym_previous_key_id: str | None = Field(
        default=None,
        description="During a key rotation's transition only: id of the retired key whose pseudonym events "
        "also carry (user.previous_hash), so funnels and retention keep one learner one (docs/analytics.md)",
    )
    lrs_pseudonym_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="HMAC keys of the learners' LRS pseudonyms (user.lrs_hash), as 'lrs1=secret' or JSON; "
        "unset: no LRS pseudonym is computed. Never rotated with pseudonym_keys (docs/xapi.md)",
    )
    lrs_pseudonym_key_id: str | None = Field(
        default=None, description="Id of the LRS key used for new LRS pseudonyms (default: the first listed)"
    )

    experiment_assignment_key: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="HMAC key of experiment assignment (tracker.variant), its own: never a pseudonym key, "
        "never rotated while an experiment runs (a new key reshuffles learners; docs/experiments.md)",
    )

    @field_validator("pseudonym_keys", "lrs_pseudonym_keys", mode="before")
    @classmethod
    def _keys_from_text(cls, value: Any) -> Any:
        return _parse_keys(value)

    @field_validator("pseudonym_keys", "lrs_pseudonym_keys")
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

    @model_validator(mode="after")
    def _check_active_key(self) -> Self:
        if self.pseudonym_key_id is not None and self.pseudonym_key_id not in self.pseudonym_keys:
            raise ValueError(f"pseudonym_key_id {self.pseudonym_key_id!r} is not among pseudonym_keys")
        previous = self.pseudonym_previous_key_id
        if previous is not None and (previous not in self.pseudonym_keys or previous == self.active_key_id):
            raise ValueError(f"pseudonym_previous_key_id {previous!r} is not a retired key of pseudonym_keys")
        lrs_id = self.lrs_pseudonym_key_id
        if lrs_id is not None and lrs_id not in self.lrs_pseudonym_keys:
            raise ValueError(f"lrs_pseudonym_key_id {lrs_id!r} is not among lrs_pseudonym_keys")
        # One key under both names would let the LRS pseudonym equal the analytics one (linkable).
        if set(self.lrs_pseudonym_keys) & set(self.pseudonym_keys) or {
            s.get_secret_value() for s in self.lrs_pseudonym_keys.values()
        } & {s.get_secret_value() for s in self.pseudonym_keys.values()}:
            raise ValueError("lrs_pseudonym_keys must share no key id and no secret with pseudonym_keys")
        assignment = self.experiment_assignment_key
        if assignment is not None and assignment.get_secret_value() in {
            s.get_secret_value() for s in (*self.pseudonym_keys.values(), *self.lrs_pseudonym_keys.values())
        }:
            raise ValueError("experiment_assignment_key must differ from every pseudonym key")
        return self

    @property
    def active_key_id(self) -> str | None:
        if self.pseudonym_key_id is not None:
            return self.pseudonym_key_id
        return next(iter(self.pseudonym_keys), None)

    @property
    def active_lrs_key_id(self) -> str | None:
        if self.lrs_pseudonym_key_id is not None:
            return self.lrs_pseudonym_key_id
        return next(iter(self.lrs_pseudonym_keys), None)


class AsgiSettings(StudyInSettings):
    """Group: the ASGI instrumentation's options (zero-code and ``instrument_app`` defaults)."""

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


class InstrumentationSettings(PseudonymKeySettings, AsgiSettings):
    """What an application's instrumentation reads (tracker, ASGI middleware, instrumentor).

    No ``.env`` unless asked (``STUDYIN_ANALYTICS_DOTENV``); the span exporter's own settings
    (the bus, the spool) are ``exporter.settings.ExporterSettings``.
    """


Settings = InstrumentationSettings
"""The name ``studyin_analytics.instrumentation`` has always exported: an app's settings."""


def load_settings() -> InstrumentationSettings:
    """:meth:`InstrumentationSettings.load`: errors name each variable, never its value."""
    return InstrumentationSettings.load()


@lru_cache(maxsize=1)
def get_settings() -> InstrumentationSettings:
    """An app's settings from the environment, read once per process."""
    return InstrumentationSettings()
