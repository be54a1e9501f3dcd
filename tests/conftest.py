"""Test harness: real Redis and real PostgreSQL, isolated per test.

Servers come from ``STUDYIN_TEST_REDIS_URL`` and ``STUDYIN_TEST_POSTGRES_URL``; when unset,
embedded servers are started once per test session (``studyin-analytics[embedded]``).
Every test gets its own PostgreSQL schema and its own Redis key prefix, so runs can repeat
and overlap. A server that cannot be reached FAILS the test with the URL and the reason;
nothing is skipped.

``STUDYIN_TEST_SCHEMA_VARIANT=citus`` runs every test on the Citus-ready schema variant (the
``settings`` of each test name it, so every migration and aggregator of the test uses it); the
default is ``plain``. Tests that must cover the citus variant in every run ask for
``citus_settings`` or ``citus_migrated``; tests of what the citus variant refuses (``rollups
rebuild``) are marked ``plain_variant`` and keep the plain schema whatever the variable says.

Tests marked ``unit`` (``make test-unit``) are server-free: they may use ``offline_settings`` and
``test_id``, and one that asks for a server fixture (``server_urls``, ``settings``, ``migrated``...)
fails at collection.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from studyin_analytics.aggregator.cli.settings import Settings, redact_url
from studyin_analytics.aggregator.devtools.embedded import EmbeddedServers
from tests.support import TEST_JWT_SECRET, TEST_PSEUDONYM_KEY, ServerUrls
from tests.support.fresh_venv import FreshVenv, fresh_venv

SCHEMA_VARIANT = os.environ.get("STUDYIN_TEST_SCHEMA_VARIANT", "plain")
"""The schema variant every test's ``settings`` names (see the module docstring)."""


def _check_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"cannot reach Redis at {redact_url(url)} ({type(exc).__name__}: {exc}); "
            "set STUDYIN_TEST_REDIS_URL to a running server or unset it to use the embedded one",
            pytrace=False,
        )
    finally:
        client.close()


def _check_postgres(url: str) -> None:
    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"cannot reach PostgreSQL at {redact_url(url)} ({type(exc).__name__}: {exc}); "
            "set STUDYIN_TEST_POSTGRES_URL to a running server or unset it to use the embedded one",
            pytrace=False,
        )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``-m unit`` (``make test-unit``), modules that mark nothing ``unit`` are not even imported:
    importing every test module costs more than running the unit tests."""
    if config.getoption("markexpr") != "unit" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    return "pytest.mark.unit" not in collection_path.read_text()


# The first test of a run to ask for the fresh venv may build it from nothing (every dependency from
# the package registry: minutes on a loaded 2-core machine) or wait for another worker that does.
FRESH_VENV_TIMEOUT_S = 1800


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "plain_variant: the test's settings name the plain schema variant whatever "
        "STUDYIN_TEST_SCHEMA_VARIANT says (for what the citus variant refuses)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "new_user_venv" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(FRESH_VENV_TIMEOUT_S))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A unit test that asks for a server fails before any server is started or reached."""
    if item.get_closest_marker("unit") and "server_urls" in getattr(item, "fixturenames", ()):
        pytest.fail(
            f"{item.nodeid} is marked `unit` but asks for a server fixture (server_urls via settings or "
            "migrated): unit tests are server-free (use offline_settings)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def server_urls() -> Iterator[ServerUrls]:
    redis_url = os.environ.get("STUDYIN_TEST_REDIS_URL")
    postgres_url = os.environ.get("STUDYIN_TEST_POSTGRES_URL")
    embedded: EmbeddedServers | None = None
    if redis_url is None or postgres_url is None:
        embedded = EmbeddedServers(redis=redis_url is None, postgres=postgres_url is None).__enter__()
        if embedded.redis is not None:
            redis_url = embedded.redis.url
        if embedded.postgres is not None:
            postgres_url = embedded.postgres.url
    assert redis_url is not None and postgres_url is not None
    try:
        _check_redis(redis_url)
        _check_postgres(postgres_url)
        yield ServerUrls(redis_url, postgres_url)
    finally:
        if embedded is not None:
            embedded.close()


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def offline_settings(test_id: str) -> Settings:
    """Settings of this test that start and reach no server (for server-free tests): the URLs point
    to a closed local port; the schema, prefix, keys and JWT secret are as in ``settings``."""
    return Settings(
        redis_url="redis://127.0.0.1:9/0",
        postgres_url="postgresql://nobody@127.0.0.1:9/none",
        postgres_schema=f"t_{test_id}",
        stream_prefix=f"test:{test_id}",
        pseudonym_keys={"t1": TEST_PSEUDONYM_KEY},  # type: ignore[arg-type]
        jwt_secret=TEST_JWT_SECRET,  # type: ignore[arg-type]
        consumer_name=f"c-{test_id}",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def settings(server_urls: ServerUrls, test_id: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings isolated to this test: own schema, own key prefix; cleaned up afterwards."""
    variant = "plain" if request.node.get_closest_marker("plain_variant") else SCHEMA_VARIANT
    value = Settings(
        redis_url=server_urls.redis_url,
        postgres_url=server_urls.postgres_url,
        postgres_schema=f"t_{test_id}",
        stream_prefix=f"test:{test_id}",
        pseudonym_keys={"t1": TEST_PSEUDONYM_KEY},  # type: ignore[arg-type]
        jwt_secret=TEST_JWT_SECRET,  # type: ignore[arg-type]
        consumer_name=f"c-{test_id}",
        postgres_schema_variant=variant,  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    yield value
    client = redis.Redis.from_url(server_urls.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{value.stream_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()

    async def drop_schema() -> None:
        conn = await asyncpg.connect(server_urls.postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{value.postgres_schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop_schema())


@pytest.fixture
async def migrated(settings: Settings) -> AsyncIterator[Settings]:
    """``settings`` with the analytics schema migrated."""
    from studyin_analytics.aggregator.storage.schema import migrate

    await asyncio.to_thread(migrate, settings)
    yield settings


@pytest.fixture
def citus_settings(settings: Settings) -> Settings:
    """``settings`` naming the citus schema variant, whatever ``STUDYIN_TEST_SCHEMA_VARIANT`` says."""
    return settings.with_overrides(postgres_schema_variant="citus")


@pytest.fixture
async def citus_migrated(citus_settings: Settings) -> AsyncIterator[Settings]:
    """``citus_settings`` with the analytics schema migrated (as the citus variant)."""
    from studyin_analytics.aggregator.storage.schema import migrate

    await asyncio.to_thread(migrate, citus_settings)
    yield citus_settings


@pytest.fixture(scope="session")
def new_user_venv() -> FreshVenv:
    """A virtualenv with only this package's wheel and its dependencies (see ``fresh_venv.py``);
    used by the instrumentation's zero-code tests and the real-app system tests."""
    return fresh_venv()
