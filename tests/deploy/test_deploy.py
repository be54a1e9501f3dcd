"""The example deployment files agree with the CLI, the settings, the collector config and the services.

Least privilege is checked per service: which secrets each one holds (connection URLs carry passwords,
so they are secrets too), that they arrive as files (systemd credentials, a Kubernetes Secret) through
the settings' ``*_FILE`` twins, and that only the migration has the owner's PostgreSQL login.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from studyin_analytics.aggregator.api.app import create_app
from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.aggregator.devtools.embedded import free_port
from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.exporter.runtime.health import HealthServer
from studyin_analytics.instrumentation.settings import ENV_PREFIX, Settings
from tests.support import ROOT
from tests.support.exporter import stop_process

DEPLOY = ROOT / "deploy"
COLLECTOR_CONFIG = ROOT / "otel-collector.yaml"

URL_FIELDS = {"redis_url", "postgres_url", "aggregator_postgres_url", "api_postgres_url"}
SECRET_FIELDS = {"pseudonym_keys", "jwt_secret"} | URL_FIELDS
SECRETS_OF = {
    "migrate": {"postgres_url"},  # the owner login: the migration only
    "aggregator": {"redis_url", "aggregator_postgres_url"},
    "api": {"redis_url", "api_postgres_url", "pseudonym_keys", "jwt_secret"},
    "gateway": {"redis_url", "pseudonym_keys"},
}
"""The secrets each service gets, and no others (least privilege)."""
PER_MEMBER_FIELDS = {"consumer_name", "aggregator_health_port", "consumer_shards"}


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


def collector_config() -> dict[str, Any]:
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    assert isinstance(config, dict)
    return config


def host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


# --- systemd -------------------------------------------------------------------------------------

SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
CREDENTIALS = "/etc/studyin-analytics/credentials"


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


def unit(name: str) -> dict[str, list[str]]:
    return parse_unit(SYSTEMD / name)["Service"]


def command_of(service: dict[str, list[str]]) -> str | None:
    """The studyin-analytics command a unit runs (None: another program)."""
    (exec_start,) = service["ExecStart"]
    argv = exec_start.split()
    if not argv[0].endswith("/studyin-analytics"):
        return None
    return argv[1]


def env_example() -> dict[str, str]:
    values = {}
    for line in (SYSTEMD / "studyin-analytics.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            variable, _, value = line.partition("=")
            values[variable] = value
    return values


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


def aggregator_argv(instance: str, host: str = "host-a") -> list[str]:
    """ExecStart of studyin-analytics-aggregator@INSTANCE with systemd's specifiers expanded."""
    (exec_start,) = unit("studyin-analytics-aggregator@.service")["ExecStart"]
    assert not set(re.findall(r"%\w", exec_start)) - {"%i", "%H"}, exec_start
    return exec_start.replace("%i", instance).replace("%H", host).split()


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


# --- Kubernetes ----------------------------------------------------------------------------------

KUBERNETES = DEPLOY / "kubernetes"
MANIFEST = KUBERNETES / "studyin-analytics.yaml"


def kubernetes_documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def by_kind() -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in kubernetes_documents():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        kinds[doc["kind"]].append(doc)
    return kinds


def named(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["metadata"]["name"] == name]
    return doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def workload_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec(doc)["containers"]  # type: ignore[no-any-return]


def studyin_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    kinds = by_kind()
    for doc in kinds["Deployment"] + kinds["StatefulSet"] + kinds["Job"]:
        for container in workload_containers(doc):
            if container["image"].startswith("registry.example/studyin-analytics"):
                yield doc, container


def mounted_secret_files(doc: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Path in the container -> (Secret name, key), for every Secret item mounted."""
    volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount.get("readOnly") is True
        for item in secret["items"]:
            files[str(PurePosixPath(mount["mountPath"]) / item["path"])] = (secret["secretName"], item["key"])
    return files


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
