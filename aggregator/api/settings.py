"""The query API's settings: the database it reads, the bus it watches (live feeds, pipeline lag) and
writes (events posted by the frontend, through the span exporter), the tokens it accepts, its HTTP
server. Read from ``STUDYIN_ANALYTICS_*`` variables, their ``*_FILE`` twins and ``.env``."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from ...exporter.settings import EventWindowSettings, ExporterSettings, HttpServerSettings, LoggingSettings
from ..storage.settings import PostgresSettings

JWT_SECRET_MIN_BYTES = 32


class ApiSettings(
    ExporterSettings, PostgresSettings, EventWindowSettings, LoggingSettings, HttpServerSettings
):
    """Everything ``studyin-analytics api`` reads (a service: ``.env`` of the working directory too)."""

    model_config = SettingsConfigDict(env_file=".env")

    api_host: str = Field(default="127.0.0.1", description="Query API bind address")
    api_port: int = Field(default=8000, ge=0, le=65535, description="Query API port")
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
        description="Funnels, retention and the cohort overview: a cell counting fewer learners "
        "(1 to k-1) is suppressed",
    )
    analysis_breakdown_limit: int = Field(
        default=20,
        ge=1,
        le=100,
        description="Funnels: breakdown values shown at most (the rest as '(other)')",
    )
    analysis_refresh_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="Funnels and retention: the API's event-sequence store reads new events when it is half "
        "this old (a query may see events stored up to this long ago)",
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
