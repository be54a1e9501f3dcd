"""Settings as pure values (no servers): prefixed environment, *_FILE twins, masked secrets, overrides.
(The CLI's use of them, with servers and subprocesses: tests/aggregator/cli/test_settings_and_cli.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from studyin_analytics.instrumentation.settings import ENV_PREFIX, Settings, redact_url

pytestmark = pytest.mark.unit


def test_offline_settings_are_isolated_and_mask_their_secrets(
    offline_settings: Settings, test_id: str
) -> None:
    assert offline_settings.postgres_schema == f"t_{test_id}"
    assert offline_settings.stream_prefix == f"test:{test_id}"
    shown = repr(offline_settings)
    assert offline_settings.jwt_secret is not None
    assert offline_settings.jwt_secret.get_secret_value() not in shown


def test_overrides_are_validated_copies(offline_settings: Settings) -> None:
    before = offline_settings.stream_shards
    changed = offline_settings.with_overrides(stream_shards=before + 3)
    assert changed.stream_shards == before + 3 and offline_settings.stream_shards == before
    with pytest.raises(ValueError, match="stream_shards"):
        offline_settings.with_overrides(stream_shards="many")


def test_values_come_from_prefixed_variables_and_file_twins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "jwt"
    secret.write_text("jwt-from-a-file-0123456789-0123456789abcdef")
    monkeypatch.setenv(f"{ENV_PREFIX}STREAM_PREFIX", "unit:prefix")
    monkeypatch.setenv(f"{ENV_PREFIX}JWT_SECRET_FILE", str(secret))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.stream_prefix == "unit:prefix"
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "jwt-from-a-file-0123456789-0123456789abcdef"


def test_a_url_password_is_masked() -> None:
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert "s3cret" not in redact_url("postgresql://u@h/db?password=s3cret")
    assert redact_url(None) == "<unset>"
