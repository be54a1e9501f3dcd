"""Settings per service (server-free): one definition per field, a library reads no ``.env`` unless asked."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from studyin_analytics.aggregator.api.settings import ApiSettings
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.settings import AggregatorSettings
from studyin_analytics.exporter.gateway.settings import GatewaySettings
from studyin_analytics.exporter.settings import BusSettings, ExporterSettings
from studyin_analytics.instrumentation import Settings as PublicSettings
from studyin_analytics.instrumentation.settings import InstrumentationSettings
from studyin_analytics.instrumentation.settings_base import DOTENV_VARIABLE, StudyInSettings

SERVICES = (InstrumentationSettings, ExporterSettings, GatewaySettings, AggregatorSettings, ApiSettings)


def test_each_field_is_defined_once() -> None:
    owners: dict[str, str] = {}
    for cls in Settings.__mro__:
        if isinstance(cls, type) and issubclass(cls, StudyInSettings):
            for name in inspect.get_annotations(cls):
                if name in cls.model_fields:
                    assert name not in owners, f"{name} defined in {owners[name]} and {cls.__name__}"
                    owners[name] = cls.__name__
    assert set(owners) == set(Settings.model_fields)


def test_the_cli_settings_are_every_service_settings() -> None:
    union = set().union(*(service.model_fields for service in SERVICES))
    assert set(Settings.model_fields) == union
    assert all(issubclass(Settings, service) for service in SERVICES)


def test_an_app_reads_only_what_it_needs() -> None:
    assert PublicSettings is InstrumentationSettings
    fields = set(InstrumentationSettings.model_fields)
    assert "pseudonym_keys" in fields and "auth_paths" in fields
    assert not fields & {"postgres_url", "jwt_secret", "redis_url", "gateway_port", "consumer_name"}
    assert "postgres_url" not in ExporterSettings.model_fields


def test_a_library_reads_no_dotenv_unless_asked(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert InstrumentationSettings().access_log == "route"
    assert ExporterSettings().stream_prefix == "studyin:analytics"
    assert InstrumentationSettings(_env_file=".env").access_log == "off"  # type: ignore[call-arg]
    monkeypatch.setenv(DOTENV_VARIABLE, str(clean_env / ".env"))
    assert InstrumentationSettings().access_log == "off"
    assert ExporterSettings().stream_prefix == "from-dotenv"


def test_services_read_dotenv_as_before(clean_env: Path) -> None:
    assert Settings().stream_prefix == "from-dotenv"
    assert GatewaySettings().stream_prefix == "from-dotenv"
    assert AggregatorSettings().stream_prefix == "from-dotenv"
    assert ApiSettings().stream_prefix == "from-dotenv"
    assert Settings(_env_file=None).stream_prefix == "studyin:analytics"  # type: ignore[call-arg]


def test_a_variable_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYIN_ANALYTICS_STREAM_PREFIX", "from-env")
    monkeypatch.setenv(DOTENV_VARIABLE, ".env")
    assert ExporterSettings().stream_prefix == "from-env"
    assert Settings().stream_prefix == "from-env"


def test_shared_code_takes_the_group() -> None:
    from studyin_analytics.exporter.bus import stream_keys

    settings = Settings(_env_file=None, stream_shards=2)  # type: ignore[call-arg]
    assert isinstance(settings, BusSettings)
    assert stream_keys(settings) == stream_keys(GatewaySettings(_env_file=None, stream_shards=2))  # type: ignore[call-arg]


def test_errors_name_the_variable_and_not_the_value(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from studyin_analytics.instrumentation.settings import ConfigurationError

    monkeypatch.setenv("STUDYIN_ANALYTICS_JWT_SECRET", "short-secret-value")
    with pytest.raises(ConfigurationError) as info:
        ApiSettings.load()
    assert "STUDYIN_ANALYTICS_JWT_SECRET" in str(info.value)
    assert "short-secret-value" not in str(info.value)
    InstrumentationSettings.load()  # the app does not read the API's secret
