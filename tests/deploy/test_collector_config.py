"""otel-collector.yaml: structure (every referenced component defined) and agreement with the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.instrumentation.privacy import DROPPED_ATTRIBUTES, IDENTITY_ATTRIBUTES
from tests.support import ROOT

CONFIG = ROOT / "otel-collector.yaml"

KNOWN_TYPES = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch", "attributes", "redaction"},
    "exporters": {"otlphttp"},
    "extensions": {"file_storage", "health_check"},
}


def load() -> dict[str, Any]:
    document = yaml.safe_load(CONFIG.read_text())
    assert isinstance(document, dict)
    return document


def gateway_defaults() -> tuple[str, int]:
    fields = Settings.model_fields
    return str(fields["gateway_host"].default), int(fields["gateway_port"].default)


def test_every_referenced_component_is_defined() -> None:
    config = load()
    service = config["service"]
    for extension in service["extensions"]:
        assert extension in config["extensions"], extension
    assert service["pipelines"], "no pipeline"
    for name, pipeline in service["pipelines"].items():
        assert name.split("/")[0] in ("traces", "logs")
        for section in ("receivers", "processors", "exporters"):
            assert pipeline[section], f"{name} has no {section}"
            for component in pipeline[section]:
                assert component in config[section], f"{section}.{component} is not defined"
    for section, known in KNOWN_TYPES.items():
        for component in config[section]:
            assert component.split("/")[0] in known, f"unknown {section} type {component}"
    for exporter in config["exporters"].values():
        storage = exporter.get("sending_queue", {}).get("storage")
        if storage is not None:
            assert storage in config["extensions"] and storage in service["extensions"]


def test_processor_order_and_delivery_guarantees() -> None:
    config = load()
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "logs"}  # log-record events take the same route (issue 16)
    for pipeline in pipelines.values():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter"  # first, per the collector's guidance
        assert processors[-1] == "batch"
        exporter = config["exporters"][pipeline["exporters"][0]]
        assert exporter["retry_on_failure"]["enabled"] is True
        assert exporter["sending_queue"]["enabled"] is True
        assert exporter["sending_queue"]["storage"].startswith("file_storage")
    assert pipelines["logs"] == pipelines["traces"]


def test_endpoints_agree_with_the_gateway_defaults() -> None:
    config = load()
    host, port = gateway_defaults()
    (exporter_name,) = next(iter(config["service"]["pipelines"].values()))["exporters"]
    endpoint = urlsplit(config["exporters"][exporter_name]["endpoint"])
    assert endpoint.scheme == "http"
    assert (endpoint.hostname, endpoint.port) == (host, port)
    assert endpoint.path in ("", "/")  # otlphttp appends /v1/traces and /v1/logs, the gateway's paths
    protocols = config["receivers"]["otlp"]["protocols"]
    receiver_ports = {int(p["endpoint"].rsplit(":", 1)[1]) for p in protocols.values()}
    assert receiver_ports == {4317, 4318}
    assert port not in receiver_ports


def test_redaction_step_deletes_every_raw_identifier() -> None:
    config = load()
    actions = config["processors"]["attributes/strip-identifiers"]["actions"]
    deleted = {a["key"] for a in actions if a.get("action") == "delete" and "key" in a}
    missing = (IDENTITY_ATTRIBUTES | DROPPED_ATTRIBUTES) - deleted
    assert not missing, f"not deleted by the collector: {sorted(missing)}"


def test_every_listener_and_target_is_loopback_and_the_queue_directory_is_absolute() -> None:
    """As shipped, nothing listens or sends beyond loopback; a deployment moves the endpoints itself.

    deploy/kubernetes overrides exactly these endpoints (tests/deploy/test_deploy.py merges the overrides
    over this file and checks probes, volume and gateway Service against the result).
    """
    config = load()
    listeners = {
        f"receivers.otlp.{name}": protocol["endpoint"]
        for name, protocol in config["receivers"]["otlp"]["protocols"].items()
    }
    listeners["extensions.health_check"] = config["extensions"]["health_check"]["endpoint"]
    for where, endpoint in listeners.items():
        host, _, port = endpoint.rpartition(":")
        assert host == "127.0.0.1" and port.isdigit(), f"{where} listens on {endpoint}"
    (exporter_name,) = next(iter(config["service"]["pipelines"].values()))["exporters"]
    assert urlsplit(config["exporters"][exporter_name]["endpoint"]).hostname == "127.0.0.1"
    storage = config["extensions"][config["exporters"][exporter_name]["sending_queue"]["storage"]]
    assert Path(storage["directory"]).is_absolute()
    assert storage["compaction"]["directory"] == storage["directory"]
