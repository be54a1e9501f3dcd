"""The example Kubernetes manifest and the collector's kustomization agree with the CLI, the settings,
the collector config and the services (least privilege per service as in test_deploy.py)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from studyin_analytics.aggregator.api.app import create_app
from studyin_analytics.aggregator.cli.settings import ENV_PREFIX, Settings
from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.exporter.runtime.health import HealthServer
from tests.support.deploy import (
    COLLECTOR_CONFIG,
    KUBERNETES,
    MANIFEST,
    SECRET_FIELDS,
    SECRETS_OF,
    by_kind,
    cli_commands,
    collector_config,
    host_port,
    mounted_secret_files,
    named,
    pod_spec,
    setting_of,
    studyin_containers,
    workload_containers,
)

# --- Kubernetes ----------------------------------------------------------------------------------


def test_kubernetes_manifest() -> None:
    kinds = by_kind()
    config = named(kinds["ConfigMap"], "studyin-analytics")
    for variable in config["data"]:
        assert setting_of(variable) not in SECRET_FIELDS, f"secret {variable} in a ConfigMap"
    ports = {k: int(v) for k, v in config["data"].items() if k.endswith("_PORT")}

    seen_commands = set()
    for doc, container in studyin_containers():
        command = container["args"][0]
        assert command in cli_commands()
        seen_commands.add(command)
        for env in container.get("env", []):
            if not env["name"].startswith(ENV_PREFIX):  # only as $(NAME) inside a setting's value
                assert any(f"$({env['name']})" in str(e.get("value", "")) for e in container["env"])
                continue
            setting_of(env["name"])
        expected_port = {
            "api": ports["STUDYIN_ANALYTICS_API_PORT"],
            "gateway": ports["STUDYIN_ANALYTICS_GATEWAY_PORT"],
            "aggregator": ports["STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT"],
        }.get(command)
        if expected_port is not None:
            assert [p["containerPort"] for p in container["ports"]] == [expected_port]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            annotations = doc["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/path"] == "/metrics"
            assert int(annotations["prometheus.io/port"]) == expected_port  # /metrics is on that port
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod_spec(doc)["securityContext"]["runAsNonRoot"] is True
    assert seen_commands == set(SECRETS_OF)

    (aggregator,) = [d for d in kinds["StatefulSet"] if d["metadata"]["name"].endswith("aggregator")]
    env = workload_containers(aggregator)[0]["env"]
    assert {
        "name": "STUDYIN_ANALYTICS_CONSUMER_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    } in env
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


def test_kubernetes_secrets_are_mounted_files_and_each_service_gets_only_its_own() -> None:
    documented = set(re.findall(r"--from-file=([\w.-]+)", MANIFEST.read_text()))
    postgres_keys: dict[str, str] = {}
    for doc, container in studyin_containers():
        command = container["args"][0]
        files = mounted_secret_files(doc, container)
        secrets, read = set(), set()
        for env in container.get("env", []):
            if not env["name"].startswith(ENV_PREFIX) or setting_of(env["name"]) not in SECRET_FIELDS:
                continue
            name = setting_of(env["name"])
            assert env["name"].endswith("_FILE") and "value" in env, f"{command}: secret {env['name']} inline"
            assert env["value"] in files, f"{command}: {env['name']} points at no mounted Secret item"
            secrets.add(name)
            read.add(files[env["value"]][1])
            if name.endswith("postgres_url"):
                postgres_keys[f"{command}: {name}"] = files[env["value"]][1]
        assert secrets == SECRETS_OF[command], f"{command} holds {sorted(secrets)}"
        mounted = {key for _, key in files.values()}
        # Nothing mounted beyond what its settings read, and the CA that the TLS URLs name.
        assert mounted == read | {"ca.pem"}, f"{command} mounts {sorted(mounted - read)}"
        assert mounted <= documented, f"{command} mounts keys the Secret's description lacks"
    assert postgres_keys == {
        "migrate: postgres_url": "postgres-owner-url",
        "aggregator: aggregator_postgres_url": "aggregator-postgres-url",
        "api: api_postgres_url": "api-postgres-url",
    }


# --- the collector on Kubernetes -----------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    document = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert isinstance(document, dict)
    return document


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The collector's merge of several --config sources: maps merge key by key, the later value wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def expand_paths(flat: dict[str, Any]) -> tuple[dict[str, Any], list[list[str]]]:
    """``a::b::c: v`` -> ``{a: {b: {c: v}}}`` (the ``yaml:`` provider's key paths), and the paths."""
    nested: dict[str, Any] = {}
    paths = []
    for key, value in flat.items():
        path = key.split("::")
        paths.append(path)
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return nested, paths


def collector_in_kubernetes() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The collector StatefulSet, its container, and the configuration it runs (sources merged)."""
    collector = named(by_kind()["StatefulSet"], "otel-collector")
    (container,) = workload_containers(collector)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(collector)["volumes"]}
    (generator,) = kustomization()["configMapGenerator"]
    config_mount = next(m for name, m in mounts.items() if "configMap" in volumes.get(name, {}))
    assert volumes[config_mount["name"]]["configMap"]["name"] == generator["name"]

    sources = [a.removeprefix("--config=") for a in container["args"] if a.startswith("--config=")]
    assert len(sources) == len(container["args"]), container["args"]
    file_key = PurePosixPath(sources[0]).relative_to(config_mount["mountPath"]).as_posix()
    generated = dict(f.split("=", 1) for f in generator["files"])
    assert (KUBERNETES / generated[file_key]).resolve() == COLLECTOR_CONFIG  # the one config, not a copy
    effective = collector_config()
    for source in sources[1:]:
        assert source.startswith("yaml:"), source
        override, paths = expand_paths(yaml.safe_load(source.removeprefix("yaml:")))
        assert all(path[-1] == "endpoint" for path in paths), f"{source}: only addresses may differ"
        for path in paths:  # replaces a value of the file, never adds a component of its own
            node: Any = effective
            for part in path:
                assert isinstance(node, dict) and part in node, (
                    f"{source}: {part} is not in {COLLECTOR_CONFIG.name}"
                )
                node = node[part]
        effective = merge(effective, override)
    return collector, container, effective


def test_kustomization_ships_the_repository_collector_config() -> None:
    document = kustomization()
    assert document["resources"] == [MANIFEST.name]
    (generator,) = document["configMapGenerator"]
    assert generator["name"] == "otel-collector" and generator["namespace"] == "studyin-analytics"
    assert [f.split("=", 1)[0] for f in generator["files"]] == [COLLECTOR_CONFIG.name]
    assert "--load-restrictor=LoadRestrictionsNone" in (KUBERNETES / "kustomization.yaml").read_text()
    assert not [d for d in by_kind()["ConfigMap"] if d["metadata"]["name"] == "otel-collector"], (
        "a hand-written copy of the collector config"
    )


def test_collector_probes_hit_health_check() -> None:
    _, container, config = collector_in_kubernetes()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    host, port = host_port(config["extensions"]["health_check"]["endpoint"])
    assert host == "0.0.0.0", "the kubelet probes the pod address, not loopback"
    for probe in ("livenessProbe", "readinessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == port
        assert container[probe]["httpGet"]["path"] == config["extensions"]["health_check"].get("path", "/")
    assert "health_check" in config["service"]["extensions"]


def test_collector_receivers_match_the_container_and_service_ports() -> None:
    _, container, config = collector_in_kubernetes()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    protocols = config["receivers"]["otlp"]["protocols"]
    assert {name: host_port(p["endpoint"]) for name, p in protocols.items()} == {
        "grpc": ("0.0.0.0", ports["otlp-grpc"]),
        "http": ("0.0.0.0", ports["otlp-http"]),
    }
    service = named(by_kind()["Service"], "otel-collector")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"otlp-grpc", "otlp-http"}


def test_collector_queue_lives_on_the_persistent_volume() -> None:
    collector, container, config = collector_in_kubernetes()
    storage_name = config["exporters"]["otlphttp/gateway"]["sending_queue"]["storage"]
    storage = config["extensions"][storage_name]
    claims = {c["metadata"]["name"] for c in collector["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(storage["directory"]) in claims, "file_storage's directory is not the volume claim"
    assert storage["compaction"]["directory"] == storage["directory"]
    pod_security = pod_spec(collector)["securityContext"]
    assert pod_security["fsGroup"] == pod_security["runAsUser"]  # the volume is writable for the collector
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_collector_exports_to_the_gateway_service() -> None:
    _, _, config = collector_in_kubernetes()
    (exporter_name,) = config["service"]["pipelines"]["traces"]["exporters"]
    endpoint = urlsplit(config["exporters"][exporter_name]["endpoint"])
    gateway = named(by_kind()["Service"], "studyin-analytics-gateway")
    name, namespace = gateway["metadata"]["name"], gateway["metadata"]["namespace"]
    assert endpoint.scheme == "http" and endpoint.path in ("", "/")
    assert endpoint.hostname in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc")
    (port,) = gateway["spec"]["ports"]
    assert endpoint.port == port["port"]
    gateway_pods = named(by_kind()["Deployment"], "studyin-analytics-gateway")
    assert gateway["spec"]["selector"] == gateway_pods["spec"]["selector"]["matchLabels"]


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
