"""The OTLP/HTTP gateway's settings: the bus it writes, the keys its privacy guard pseudonymizes with,
its HTTP server. Read from ``STUDYIN_ANALYTICS_*`` variables, their ``*_FILE`` twins and ``.env``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ...instrumentation.settings import PseudonymKeySettings
from ..settings import BusSettings, EventWindowSettings, HttpServerSettings, LoggingSettings


class GatewaySettings(
    PseudonymKeySettings, BusSettings, EventWindowSettings, LoggingSettings, HttpServerSettings
):
    """Everything ``studyin-analytics gateway`` reads (a service: ``.env`` of the working directory too)."""

    model_config = SettingsConfigDict(env_file=".env")

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
