"""The CLI's settings: every service's at once, since one environment starts any of them.

:class:`Settings` inherits each service's class (app and exporter, gateway, aggregator, query API), so
it is accepted wherever one of them (or one of their groups) is expected; each field is still defined
once, in its group. A service: ``.env`` of the working directory is read, as it always was.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import SettingsConfigDict

from ...exporter.gateway.settings import GatewaySettings
from ...instrumentation.settings import InstrumentationSettings
from ...instrumentation.settings_base import (
    DOTENV_VARIABLE,
    ENV_PREFIX,
    ConfigurationError,
    StudyInSettings,
    redact_url,
    require,
)
from ..api.settings import ApiSettings
from ..consumer.settings import AggregatorSettings

__all__ = [
    "DOTENV_VARIABLE",
    "ENV_PREFIX",
    "ConfigurationError",
    "Settings",
    "StudyInSettings",
    "get_settings",
    "load_settings",
    "redact_url",
    "require",
]


class Settings(ApiSettings, GatewaySettings, AggregatorSettings, InstrumentationSettings):
    """All settings, read from ``STUDYIN_ANALYTICS_*`` variables (and ``.env``)."""

    model_config = SettingsConfigDict(env_file=".env")


def load_settings() -> Settings:
    """Settings from the environment; invalid values raise :class:`ConfigurationError` naming each variable.

    The commands' entry point: the message lists ``STUDYIN_ANALYTICS_<FIELD>: reason`` and never the value.
    """
    return Settings.load()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process (the entry-point path)."""
    return Settings()
