"""Settings of the LRS forwarder (``studyin-analytics lrs-forward``): the common settings plus ``lrs_*``.

Read like every setting from ``STUDYIN_ANALYTICS_*`` variables, secrets also from ``*_FILE`` twins
(``STUDYIN_ANALYTICS_LRS_PASSWORD_FILE``...). Only the forwarder reads them; the app and the aggregator
never hold the LRS's credentials (the app holds the LRS *pseudonym* key, a setting of its own:
``lrs_pseudonym_keys`` in :mod:`...instrumentation.settings`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from ...instrumentation.settings_base import ConfigurationError, redact_url
from ..consumer.settings import AggregatorSettings as Settings
from .xapi import Selection, XapiConfig


class LrsSettings(Settings):
    lrs_url: str | None = Field(
        default=None,
        description="xAPI base URL of the school's LRS, e.g. https://lrs.school.example/xAPI "
        "(statements are POSTed to <url>/statements)",
    )
    lrs_username: str | None = Field(default=None, description="LRS basic-auth user (with lrs_password)")
    lrs_password: SecretStr | None = Field(default=None, description="LRS basic-auth password")
    lrs_oauth_token_url: str | None = Field(
        default=None, description="OAuth 2 token endpoint: client-credentials grant instead of basic auth"
    )
    lrs_oauth_client_id: str | None = Field(default=None, description="OAuth client id")
    lrs_oauth_client_secret: SecretStr | None = Field(default=None, description="OAuth client secret")
    lrs_oauth_scope: str | None = Field(default=None, description="OAuth scope to ask for (optional)")
    lrs_iri_base: str | None = Field(
        default=None,
        description="IRI base of StudyIn's own verbs, activities and extensions (permanent in an LRS: "
        "a domain StudyIn controls), e.g. https://xapi.studyin.example",
    )
    lrs_home_page: str | None = Field(
        default=None, description="homePage of every actor's account (the system the pseudonyms belong to)"
    )
    lrs_event_types: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        default=None,
        description="Comma-separated learning event types to forward (default: all; system events never)",
    )
    lrs_consumer_group: str = Field(
        default="studyin-lrs", min_length=1, description="Consumer group of the forwarder on the bus"
    )
    lrs_read_entries: int = Field(default=200, ge=1, le=10_000, description="Bus entries per read")
    lrs_batch_statements: int = Field(default=100, ge=1, le=10_000, description="Statements per POST")
    lrs_batch_bytes: int = Field(default=1_000_000, ge=1024, description="JSON bytes per POST")
    lrs_timeout_s: float = Field(default=30.0, gt=0, le=600, description="Timeout of one LRS request")
    lrs_retry_max_s: float = Field(
        default=60.0, gt=0, le=3600, description="Longest wait between retries of an unavailable LRS"
    )
    lrs_catch_up: bool = Field(
        default=True,
        description="Catch up from PostgreSQL's raw events when the bus trimmed entries the forwarder "
        "had not delivered (needs postgres_url)",
    )
    lrs_health_host: str = Field(default="127.0.0.1", description="Forwarder health endpoint address")
    lrs_health_port: int = Field(
        default=8004, ge=0, le=65535, description="Forwarder health endpoint port (0: disabled)"
    )

    @field_validator("lrs_event_types", mode="before")
    @classmethod
    def _types_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @model_validator(mode="after")
    def _check_lrs(self) -> LrsSettings:
        if self.lrs_event_types is not None:
            Selection.of(self.lrs_event_types)  # SelectionError (a ValueError) names the type
        if (self.lrs_username is None) != (self.lrs_password is None):
            raise ValueError("lrs_username and lrs_password go together")
        oauth = (self.lrs_oauth_token_url, self.lrs_oauth_client_id, self.lrs_oauth_client_secret)
        if any(v is not None for v in oauth) and any(v is None for v in oauth):
            raise ValueError(
                "lrs_oauth_token_url, lrs_oauth_client_id and lrs_oauth_client_secret go together"
            )
        if self.lrs_username is not None and self.lrs_oauth_token_url is not None:
            raise ValueError("configure basic auth (lrs_username) or OAuth (lrs_oauth_*), not both")
        return self

    def selection(self) -> Selection:
        if self.lrs_event_types is None:
            return Selection.all_learning_events()
        return Selection.of(self.lrs_event_types)

    def xapi_config(self) -> XapiConfig:
        for name in ("lrs_iri_base", "lrs_home_page"):
            if getattr(self, name) is None:
                raise ConfigurationError(f"STUDYIN_ANALYTICS_{name.upper()} is not set")
        assert self.lrs_iri_base is not None and self.lrs_home_page is not None
        try:
            return XapiConfig(iri_base=self.lrs_iri_base, home_page=self.lrs_home_page)
        except ValueError as exc:
            raise ConfigurationError(f"STUDYIN_ANALYTICS_LRS_{exc}") from None

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in ("lrs_url", "lrs_oauth_token_url") and isinstance(value, str):
                yield name, redact_url(value)
            else:
                yield name, value

    @property
    def statements_url(self) -> str:
        if not self.lrs_url:
            raise ConfigurationError("STUDYIN_ANALYTICS_LRS_URL is not set")
        return self.lrs_url.rstrip("/") + "/statements"


def load_lrs_settings() -> LrsSettings:
    """:class:`LrsSettings` from the environment; errors name the variables, never the values."""
    from pydantic import ValidationError

    try:
        return LrsSettings()
    except ValidationError as exc:
        fields = "; ".join(
            f"STUDYIN_ANALYTICS_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {fields}") from None
