"""What the deployment tests read: the example files under deploy/ (systemd units, the Kubernetes
manifest), the collector config, and the secrets each service may hold."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.aggregator.cli.settings import ENV_PREFIX, Settings
from tests.support import ROOT

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


def aggregator_argv(instance: str, host: str = "host-a") -> list[str]:
    """ExecStart of studyin-analytics-aggregator@INSTANCE with systemd's specifiers expanded."""
    (exec_start,) = unit("studyin-analytics-aggregator@.service")["ExecStart"]
    assert not set(re.findall(r"%\w", exec_start)) - {"%i", "%H"}, exec_start
    return exec_start.replace("%i", instance).replace("%H", host).split()


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
