"""Deployed aggregators and query APIs wait for their servers at start-up (``--wait-for-services``)."""

from __future__ import annotations

from typing import Any

from studyin_analytics.aggregator.cli.main import build_parser
from tests.support.deploy import aggregator_argv, by_kind, named, unit, workload_containers


def _check_probe(container: dict[str, Any], wait_s: float) -> None:
    """The Kubernetes startup probe lets the wait run out before liveness can restart the pod."""
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] > wait_s


def test_deployed_aggregators_wait_for_their_services_and_probes_give_them_the_time() -> None:
    """Start-up order does not matter: both deployments start the aggregator with --wait-for-services."""
    systemd = build_parser().parse_args(aggregator_argv("8002")[1:])
    assert systemd.wait_for_services >= 60
    (aggregator,) = [d for d in by_kind()["StatefulSet"] if d["metadata"]["name"].endswith("aggregator")]
    container = workload_containers(aggregator)[0]
    args = build_parser().parse_args(container["args"])
    assert args.command == "aggregator" and args.wait_for_services >= 60
    _check_probe(container, args.wait_for_services)


def test_deployed_apis_wait_for_postgres_and_probes_give_them_the_time() -> None:
    (exec_start,) = unit("studyin-analytics-api.service")["ExecStart"]
    systemd = build_parser().parse_args(exec_start.split()[1:])
    assert systemd.command == "api" and systemd.wait_for_services >= 60
    container = workload_containers(named(by_kind()["Deployment"], "studyin-analytics-api"))[0]
    args = build_parser().parse_args(container["args"])
    assert args.command == "api" and args.wait_for_services >= 60
    _check_probe(container, args.wait_for_services)
