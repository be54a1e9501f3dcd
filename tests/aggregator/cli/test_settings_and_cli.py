"""Settings (one place, secrets masked) and the CLI's exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from studyin_analytics.aggregator.cli.settings import Settings, redact_url
from studyin_analytics.aggregator.devtools.embedded import free_port
from tests.support import ROOT, ServerUrls

CLI = [sys.executable, "-m", "studyin_analytics.aggregator.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    clean.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=clean, timeout=60, check=False)


def test_environment_gives_a_subprocess_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        redis_url="redis://:pw@127.0.0.1:6379/0",
        postgres_url="postgresql://app:pw@127.0.0.1:5432/db",
        postgres_schema="elsewhere",
        stream_prefix="test:env",
        stream_shards=4,
        pseudonym_keys="k2=secret-two-0123456789,k1=secret-one-0123456789",  # type: ignore[arg-type]
        jwt_secret="jwt-secret-0123456789abcdef-0123456789",  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    env = {**settings.environment(), **settings.environment("pseudonym_keys", "jwt_secret")}
    for name in [k for k in os.environ if k.startswith("STUDYIN_ANALYTICS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings(_env_file=None)  # type: ignore[call-arg]
    assert again.model_dump() == settings.model_dump()
    assert (
        again.jwt_secret is not None
        and again.jwt_secret.get_secret_value() == "jwt-secret-0123456789abcdef-0123456789"
    )
    assert {k: v.get_secret_value() for k, v in again.pseudonym_keys.items()} == {
        "k2": "secret-two-0123456789",
        "k1": "secret-one-0123456789",
    }
    assert "STUDYIN_ANALYTICS_AGGREGATOR_POSTGRES_URL" not in settings.environment("aggregator_postgres_url")


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings(
        redis_url="redis://:hunter2-redis@127.0.0.1:6379/0",
        postgres_url="postgresql://app:hunter2-pg@127.0.0.1:5432/db",
        pseudonym_keys="k2=hunter2-key-0123456789,k1=older-key-0123456789",  # type: ignore[arg-type]
        jwt_secret="hunter2-jwt-0123456789-0123456789abcdef",  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    text = repr(settings) + str(settings)
    assert "hunter2" not in text
    assert "127.0.0.1:6379" in text  # the rest of the URL stays readable
    assert settings.active_key_id == "k2"
    assert list(settings.pseudonym_keys) == ["k2", "k1"]


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYIN_ANALYTICS_STREAM_PREFIX", "x:y")
    monkeypatch.setenv("STUDYIN_ANALYTICS_PSEUDONYM_KEYS", '{"a1": "0123456789abcdef0"}')
    monkeypatch.setenv("STUDYIN_ANALYTICS_RETENTION_DAYS", "3")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.stream_prefix == "x:y"
    assert settings.retention_days == 3
    assert settings.active_key_id == "a1"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("pseudonym_keys", "k1=short", "shorter than 16"),
        ("pseudonym_keys", "no-equals-sign", "key_id=secret"),
        ("pseudonym_key_id", "missing", "not among pseudonym_keys"),
        ("retention_days", "-1", "greater than 0"),
    ],
)
def test_bad_settings_name_field_and_reason(field: str, value: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(
            **{field: value, "pseudonym_keys": value if field == "pseudonym_keys" else "k1=0123456789abcdef"}
        )  # type: ignore[arg-type]
    message = str(info.value)
    assert reason in message
    assert "0123456789abcdef" not in message  # inputs are hidden


def test_redact_url() -> None:
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact_url(None) == "<unset>"
    # A password libpq (and redis-py) take from the query, and libpq's keyword form.
    assert redact_url("postgresql://u@h/db?sslmode=require&password=s3cret") == (
        "postgresql://u@h/db?sslmode=require&password=***"
    )
    assert (
        redact_url("host=db user=app password='it\\'s' dbname=x") == "host=db user=app password=*** dbname=x"
    )
    # Unencoded "@" and "/" in the password: none of it shows, the host does.
    assert redact_url("postgresql://app:p@ss/w@rd@db.internal:5432/analytics") == (
        "postgresql://app:***@db.internal:5432/analytics"
    )


_URL_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=4, max_size=24)


@settings(max_examples=500, deadline=None)
@given(
    password=_URL_TEXT, encode=st.booleans(), form=st.sampled_from(["userinfo", "query", "both", "keyword"])
)
def test_no_password_survives_redaction(password: str, encode: bool, form: str) -> None:
    """Any password, any characters, as typed (or percent-encoded), in every place a URL or a libpq
    connection string carries one: redact_url shows none of it."""
    shown = quote(password, safe="") if encode else password
    if form == "keyword":
        quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
        url, rest = (
            f"host=db.internal port=5432 password={quoted} user=app",
            "host=db.internal port=5432 password=*** user=app",
        )
    else:
        if form == "query":
            assume("&" not in shown and ";" not in shown)  # unencoded, these end a query value
        userinfo = f"app:{shown}@" if form in ("userinfo", "both") else "app@"
        query = f"?sslmode=require&password={shown}&application_name=x" if form in ("query", "both") else ""
        url = f"postgresql://{userinfo}db.internal:5432/analytics{query}"
        rest = "postgresql://app:@db.internal:5432/analytics?sslmode=require&password=&application_name=x"
    # ``rest`` is everything the redacted form may show besides the password (a password such as
    # "pass" or "word" is a substring of the keyword "password" itself).
    assume(password not in rest and shown not in rest and password not in "***")
    redacted = redact_url(url)
    assert password not in redacted and shown not in redacted, (url, redacted)
    assert "***" in redacted


def test_a_query_password_never_reaches_repr_or_a_cli_error() -> None:
    url = "postgresql://app@127.0.0.1:1/db?sslmode=disable&password=hunter2-query"
    settings = Settings(postgres_url=url, _env_file=None)  # type: ignore[call-arg]
    assert "hunter2" not in repr(settings) + str(settings)
    result = run_cli("migrate", env={"STUDYIN_ANALYTICS_POSTGRES_URL": url})
    assert result.returncode == 1, result.stderr
    assert "cannot reach PostgreSQL" in result.stderr and "127.0.0.1:1" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_a_comma_inside_a_key_secret_is_never_echoed_as_a_key_id() -> None:
    for text in ("k1=0123456789abcdef,hunter2-tail", "k1=0123456789abcdef,hunter2=xyz", "k1=hunter2,part=s"):
        result = run_cli("migrate", env={"STUDYIN_ANALYTICS_PSEUDONYM_KEYS": text})
        assert result.returncode == 2, result.stderr
        assert "STUDYIN_ANALYTICS_PSEUDONYM_KEYS" in result.stderr
        assert "hunter2" not in result.stderr and "part" not in result.stderr, result.stderr


def test_a_short_jwt_secret_is_refused_by_name() -> None:
    """HS256 needs 32 bytes (PyJWT's threshold; below it PyJWT only warns, in plain text)."""
    for secret in ("x", "y" * 31, "é" * 15):  # 30 bytes in UTF-8
        result = run_cli("migrate", env={"STUDYIN_ANALYTICS_JWT_SECRET": secret})
        assert result.returncode == 2, result.stderr
        assert "STUDYIN_ANALYTICS_JWT_SECRET" in result.stderr and "32 bytes" in result.stderr
        assert secret not in result.stderr
    assert Settings(jwt_secret="é" * 16, _env_file=None).jwt_secret is not None  # type: ignore[arg-type, call-arg]


def test_every_command_has_help() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("migrate", "aggregator", "api", "demo"):
        assert command in top.stdout
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: studyin-analytics" in result.stdout


def test_missing_configuration_exits_2_naming_the_variable() -> None:
    result = run_cli("migrate")
    assert result.returncode == 2
    assert "STUDYIN_ANALYTICS_POSTGRES_URL is not set" in result.stderr


def test_unreachable_redis_exits_1_without_the_password(server_urls: ServerUrls) -> None:
    port = free_port()  # nothing listens there
    result = run_cli(
        "aggregator",
        env={
            "STUDYIN_ANALYTICS_REDIS_URL": f"redis://:s3cret-pw@127.0.0.1:{port}/0",
            "STUDYIN_ANALYTICS_POSTGRES_URL": server_urls.postgres_url,
        },
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0")
    assert "s3cret-pw" not in result.stderr


def test_aggregator_on_an_unmigrated_schema_says_to_migrate(server_urls: ServerUrls) -> None:
    prefix = f"test:unmigrated-{os.getpid()}"
    try:
        result = run_cli(
            "aggregator",
            env={
                "STUDYIN_ANALYTICS_REDIS_URL": server_urls.redis_url,
                "STUDYIN_ANALYTICS_POSTGRES_URL": server_urls.postgres_url,
                "STUDYIN_ANALYTICS_POSTGRES_SCHEMA": "never_migrated_schema",
                "STUDYIN_ANALYTICS_STREAM_PREFIX": prefix,
                "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0",
            },
        )
    finally:
        client = redis.Redis.from_url(server_urls.redis_url)
        client.delete(*client.keys(f"{prefix}:*") or [f"{prefix}:none"])
        client.close()
    assert result.returncode == 2, result.stderr
    assert "never_migrated_schema" in result.stderr
    assert "studyin-analytics migrate" in result.stderr


def test_unreachable_postgres_exits_1_naming_it() -> None:
    port = free_port()
    result = run_cli(
        "migrate", env={"STUDYIN_ANALYTICS_POSTGRES_URL": f"postgresql://u:pw9@127.0.0.1:{port}/x"}
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: cannot reach PostgreSQL at postgresql://u:***@127.0.0.1:{port}/x"
    )
    assert "pw9" not in result.stderr


def test_demo_source_has_no_hand_installed_dependency() -> None:
    """The README's two commands are make targets that install into .venv first."""
    makefile = (ROOT / "Makefile").read_text()
    assert "demo: $(STAMP)" in makefile and "test: $(STAMP)" in makefile
    assert '-m pip install --quiet -e ".[dev]"' in makefile


def test_secrets_can_come_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("f1=from-a-file-0123456789\n")
    jwt_secret = tmp_path / "jwt"
    jwt_secret.write_text("jwt-from-file-0123456789-0123456789abcdef")
    monkeypatch.setenv("STUDYIN_ANALYTICS_PSEUDONYM_KEYS_FILE", str(keys))
    monkeypatch.setenv("STUDYIN_ANALYTICS_JWT_SECRET_FILE", str(jwt_secret))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.active_key_id == "f1"
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "jwt-from-file-0123456789-0123456789abcdef"
    # A plain variable wins over its *_FILE twin.
    monkeypatch.setenv("STUDYIN_ANALYTICS_JWT_SECRET", "jwt-from-env-0123456789-0123456789abcdef")
    assert (
        Settings(_env_file=None).jwt_secret.get_secret_value() == "jwt-from-env-0123456789-0123456789abcdef"
    )  # type: ignore[call-arg, union-attr]


def test_unreadable_secret_file_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_cli("migrate", env={"STUDYIN_ANALYTICS_JWT_SECRET_FILE": str(tmp_path / "missing")})
    assert result.returncode == 2
    assert "STUDYIN_ANALYTICS_JWT_SECRET_FILE: cannot read" in result.stderr
