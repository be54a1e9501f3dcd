"""The example deployment files agree with the CLI, the settings and the services' endpoints."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from studyin_analytics.aggregator.api import create_app
from studyin_analytics.aggregator.cli import build_parser
from studyin_analytics.aggregator.health import HealthServer
from studyin_analytics.exporter.gateway import create_gateway
from studyin_analytics.instrumentation.settings import ENV_PREFIX, Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SECRET_FIELDS = {"pseudonym_keys", "jwt_secret"}


def cli_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)  # type: ignore[arg-type]


def setting_of(variable: str) -> str:
    assert variable.startswith(ENV_PREFIX), variable
    name = variable.removeprefix(ENV_PREFIX).lower()
    name = name.removesuffix("_file")
    assert name in Settings.model_fields, f"{variable} names no setting"
    return name


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        sections[section][key].append(value)
    return sections


UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units(unit: Path) -> None:
    sections = parse_unit(unit)
    assert {"Unit", "Service", "Install"} <= set(sections)
    service = sections["Service"]
    (exec_start,) = service["ExecStart"]
    if "studyin-analytics " in exec_start:
        command = exec_start.split("studyin-analytics ", 1)[1].split()[0]
        assert command in cli_commands()
        assert service["EnvironmentFile"] == ["/etc/studyin-analytics/env"]
    for assignment in service.get("Environment", []):
        variable, _, value = assignment.partition("=")
        name = setting_of(variable)
        if name in SECRET_FIELDS:
            assert variable.endswith("_FILE"), f"{unit.name}: secret {variable} given inline"
            assert value.startswith("%d/"), "secrets come from systemd credentials"
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]


def test_only_services_that_pseudonymize_get_the_keys() -> None:
    holders = {u.name for u in UNITS if "PSEUDONYM_KEYS" in u.read_text()}
    assert holders == {"studyin-analytics-api.service", "studyin-analytics-gateway.service"}


def test_env_example_names_only_real_non_secret_settings() -> None:
    for line in (DEPLOY / "systemd" / "studyin-analytics.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            variable = line.split("=", 1)[0]
            assert setting_of(variable) not in SECRET_FIELDS


def kubernetes_documents() -> list[dict[str, Any]]:
    text = (DEPLOY / "kubernetes" / "studyin-analytics.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def workload_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def test_kubernetes_manifest() -> None:
    docs = kubernetes_documents()
    kinds = defaultdict(list)
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        kinds[doc["kind"]].append(doc)
    (config,) = [d for d in kinds["ConfigMap"] if d["metadata"]["name"] == "studyin-analytics"]
    for variable in config["data"]:
        assert setting_of(variable) not in SECRET_FIELDS, f"secret {variable} in a ConfigMap"
    ports = {k: int(v) for k, v in config["data"].items() if k.endswith("_PORT")}

    seen_commands = set()
    for doc in kinds["Deployment"] + kinds["StatefulSet"] + kinds["Job"]:
        for container in workload_containers(doc):
            if not container["image"].startswith("registry.example/studyin-analytics"):
                continue
            command = container["args"][0]
            assert command in cli_commands()
            seen_commands.add(command)
            for env in container.get("env", []):
                if not env["name"].startswith(ENV_PREFIX):  # only as $(NAME) inside a setting's value
                    assert any(f"$({env['name']})" in str(e.get("value", "")) for e in container["env"])
                    continue
                name = setting_of(env["name"])
                if name in SECRET_FIELDS:
                    assert env["name"].endswith("_FILE") and env["value"].startswith("/run/secrets/")
            expected_port = {
                "api": ports["STUDYIN_ANALYTICS_API_PORT"],
                "gateway": ports["STUDYIN_ANALYTICS_GATEWAY_PORT"],
                "aggregator": ports["STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT"],
            }.get(command)
            if expected_port is not None:
                assert [p["containerPort"] for p in container["ports"]] == [expected_port]
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert seen_commands == {"migrate", "aggregator", "api", "gateway"}

    (aggregator,) = [d for d in kinds["StatefulSet"] if d["metadata"]["name"].endswith("aggregator")]
    env = workload_containers(aggregator)[0]["env"]
    assert {
        "name": "STUDYIN_ANALYTICS_CONSUMER_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    } in env
    assert not re.search("PSEUDONYM|JWT", yaml.safe_dump(aggregator)), "the aggregator needs no secrets"
    # Member i of N reads shards s % N == i: N is the replica count and together they cover every shard.
    (shards_env,) = [e for e in env if e["name"] == "STUDYIN_ANALYTICS_CONSUMER_SHARDS"]
    index_variable, members = shards_env["value"].removeprefix("$(").split(")/")
    assert int(members) == aggregator["spec"]["replicas"]
    assert any(e["name"] == index_variable and "pod-index" in str(e["valueFrom"]) for e in env)
    shard_count = int(config["data"]["STUDYIN_ANALYTICS_STREAM_SHARDS"])
    covered = [
        Settings(stream_shards=shard_count, consumer_shards=f"{i}/{members}", _env_file=None).preferred_shards  # type: ignore[call-arg]
        for i in range(int(members))
    ]
    assert sorted(s for shards in covered for s in shards) == list(range(shard_count))


async def test_probe_paths_exist_in_the_services() -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",  # building the apps connects to nothing
        postgres_url="postgresql://u@127.0.0.1:1/x",
        pseudonym_keys="k1=0123456789abcdef0",  # type: ignore[arg-type]
        jwt_secret="x" * 32,  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    api_paths = {getattr(r, "path", None) for r in create_app(settings).routes}
    assert {"/healthz", "/readyz"} <= api_paths
    gateway_paths = {getattr(r, "path", None) for r in create_gateway(settings).routes}
    assert "/healthz" in gateway_paths

    async def status() -> dict[str, Any]:
        return {"healthy": True, "redis": "ok", "postgres": "ok"}

    server = HealthServer(status, "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await server.stop()
