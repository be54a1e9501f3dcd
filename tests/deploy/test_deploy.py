"""The example deployment files agree with the CLI, the settings, the collector config and the services.

Least privilege is checked per service: which secrets each one holds (connection URLs carry passwords,
so they are secrets too), that they arrive as files (systemd credentials, a Kubernetes Secret) through
the settings' ``*_FILE`` twins, and that only the migration has the owner's PostgreSQL login.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path, PurePosixPath

import httpx
import pytest

from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.aggregator.cli.settings import ENV_PREFIX, Settings
from studyin_analytics.aggregator.devtools.embedded import free_port
from tests.support.deploy import (
    COLLECTOR_CONFIG,
    CREDENTIALS,
    PER_MEMBER_FIELDS,
    SECRET_FIELDS,
    SECRETS_OF,
    UNITS,
    URL_FIELDS,
    aggregator_argv,
    cli_commands,
    collector_config,
    command_of,
    env_example,
    parse_unit,
    setting_of,
    unit,
)
from tests.support.exporter import stop_process

# --- systemd -------------------------------------------------------------------------------------


def test_the_unit_set() -> None:
    assert {u.name for u in UNITS} == {
        "studyin-analytics-migrate.service",
        "studyin-analytics-aggregator@.service",
        "studyin-analytics-api.service",
        "studyin-analytics-gateway.service",
        "studyin-analytics-collector.service",
    }
    commands = {command_of(unit(u.name)) for u in UNITS}
    assert commands == {"migrate", "aggregator", "api", "gateway", None}
    assert set(SECRETS_OF) <= cli_commands()


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_units(path: Path) -> None:
    sections = parse_unit(path)
    assert {"Unit", "Service", "Install"} <= set(sections)
    service = sections["Service"]
    if command_of(service) is not None:
        assert command_of(service) in cli_commands()
        assert service["EnvironmentFile"] == ["/etc/studyin-analytics/env"]
    for assignment in service.get("Environment", []):
        setting_of(assignment.partition("=")[0])
    assert service["DynamicUser"] == ["yes"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]


@pytest.mark.parametrize("command", sorted(SECRETS_OF))
def test_systemd_secrets_are_credentials_and_each_service_gets_only_its_own(command: str) -> None:
    (path,) = [u for u in UNITS if command_of(unit(u.name)) == command]
    service = unit(path.name)
    credentials = {}
    for line in service.get("LoadCredential", []):
        name, _, source = line.partition(":")
        assert source == f"{CREDENTIALS}/{name}", f"{path.name}: credential {name} from {source}"
        credentials[name] = source
    secrets, used = set(), set()
    for assignment in service.get("Environment", []):
        variable, _, value = assignment.partition("=")
        name = setting_of(variable)
        if name not in SECRET_FIELDS:
            continue
        assert variable.endswith("_FILE"), f"{path.name}: secret {variable} given inline"
        assert value.startswith("%d/"), f"{path.name}: {variable} is not a systemd credential"
        credential = value.removeprefix("%d/")
        assert credential in credentials, f"{path.name}: {variable} names no LoadCredential= {credential}"
        secrets.add(name)
        used.add(credential)
    assert secrets == SECRETS_OF[command], f"{path.name} holds {sorted(secrets)}"
    assert used == set(credentials), f"{path.name} loads credentials it does not use"


def test_each_service_has_its_own_postgres_login_and_only_migrate_the_owners() -> None:
    sources: dict[str, set[str]] = defaultdict(set)  # PostgreSQL URL setting -> credential files
    for path in UNITS:
        service = unit(path.name)
        credentials = dict(line.split(":", 1) for line in service.get("LoadCredential", []))
        for assignment in service.get("Environment", []):
            variable, _, value = assignment.partition("=")
            if setting_of(variable).endswith("postgres_url"):
                sources[f"{path.name}: {setting_of(variable)}"].add(credentials[value.removeprefix("%d/")])
    assert sources == {
        "studyin-analytics-migrate.service: postgres_url": {f"{CREDENTIALS}/postgres-owner-url"},
        "studyin-analytics-aggregator@.service: aggregator_postgres_url": {
            f"{CREDENTIALS}/aggregator-postgres-url"
        },
        "studyin-analytics-api.service: api_postgres_url": {f"{CREDENTIALS}/api-postgres-url"},
    }
    # A plain variable wins over its *_FILE twin: the shared file must not name any URL.
    assert not {setting_of(v) for v in env_example()} & URL_FIELDS


def test_only_services_that_pseudonymize_get_the_keys() -> None:
    holders = {u.name for u in UNITS if "PSEUDONYM_KEYS" in u.read_text()}
    assert holders == {"studyin-analytics-api.service", "studyin-analytics-gateway.service"}


def test_env_example_names_only_real_shared_non_secret_settings() -> None:
    for variable in env_example():
        name = setting_of(variable)
        assert name not in SECRET_FIELDS, f"secret {variable} in the shared environment file"
        # EnvironmentFile= overrides Environment=: per-member values there would beat the drop-ins.
        assert name not in PER_MEMBER_FIELDS, f"per-member {variable} in the shared environment file"


def test_aggregator_instances_get_their_own_health_port_and_consumer_name() -> None:
    service = unit("studyin-analytics-aggregator@.service")
    assert not [e for e in service.get("Environment", []) if "HEALTH_PORT" in e or "CONSUMER_NAME" in e]
    env = env_example()
    other_ports = {int(env[f"{ENV_PREFIX}API_PORT"]), int(env[f"{ENV_PREFIX}GATEWAY_PORT"])}
    seen = set()
    for instance in ("8002", "8003", "8004"):
        args = build_parser().parse_args(aggregator_argv(instance)[1:])
        assert args.command == "aggregator"
        assert args.health_port == int(instance) != 0  # 0 would turn health and /metrics off
        assert args.health_port not in other_ports
        seen.add((args.health_port, args.consumer_name))
    assert len({port for port, _ in seen}) == len({name for _, name in seen}) == 3


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, f"the aggregator exited with {process.returncode}"
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_an_aggregator_instance_serves_health_and_metrics_on_its_port(
    migrated: Settings, tmp_path: Path
) -> None:
    """The unit's real command line, its shared environment file and its credentials as files."""
    instance = str(free_port())
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "redis-url").write_text(f"{migrated.redis_url}\n")
    (credentials / "aggregator-postgres-url").write_text(f"{migrated.postgres_url}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(env_example())
    for assignment in unit("studyin-analytics-aggregator@.service")["Environment"]:
        variable, _, value = assignment.partition("=")
        env[variable] = value.replace("%d", str(credentials))
    env[f"{ENV_PREFIX}POSTGRES_SCHEMA"] = migrated.postgres_schema
    env[f"{ENV_PREFIX}STREAM_PREFIX"] = migrated.stream_prefix
    argv = aggregator_argv(instance, socket.gethostname())
    executable = Path(sys.executable).with_name("studyin-analytics")
    assert executable.is_file(), f"{executable} missing: install the project (make install)"
    with open(tmp_path / "aggregator.log", "wb") as log:
        process = subprocess.Popen(
            [str(executable), *argv[1:]], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{instance}"
        assert wait_http(f"{base}/healthz", process, 60).status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert "studyin_aggregator_" in metrics.text
        status = httpx.get(f"{base}/status", timeout=5).json()
        assert status["consumer"] == f"{socket.gethostname()}-{instance}"
    finally:
        stop_process(process)
    assert process.returncode == 0, (tmp_path / "aggregator.log").read_text()


def test_systemd_collector_runs_the_repository_config_with_its_queue_in_the_state_directory() -> None:
    service = unit("studyin-analytics-collector.service")
    (exec_start,) = service["ExecStart"]
    argv = exec_start.split()
    assert argv[0].endswith("otelcol-contrib")
    (config_path,) = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
    assert PurePosixPath(config_path) == PurePosixPath("/etc/studyin-analytics") / COLLECTOR_CONFIG.name
    storage = collector_config()["extensions"]["file_storage/queue"]
    (state,) = service["StateDirectory"]
    assert PurePosixPath("/var/lib") / state == PurePosixPath(storage["directory"])
    assert storage["compaction"]["directory"] == storage["directory"]
    assert "EnvironmentFile" not in service and "LoadCredential" not in service  # it holds no secrets
