"""Deployed aggregators wait for their servers at start-up (``--wait-for-services``)."""

from __future__ import annotations

from studyin_analytics.aggregator.cli.main import build_parser
from tests.support.deploy import aggregator_argv, by_kind, workload_containers


def test_deployed_aggregators_wait_for_their_services_and_probes_give_them_the_time() -> None:
    """Start-up order does not matter: both deployments start the aggregator with --wait-for-services,
    and the Kubernetes startup probe lets the wait run out before liveness can restart the pod."""
    systemd = build_parser().parse_args(aggregator_argv("8002")[1:])
    assert systemd.wait_for_services >= 60
    (aggregator,) = [d for d in by_kind()["StatefulSet"] if d["metadata"]["name"].endswith("aggregator")]
    container = workload_containers(aggregator)[0]
    args = build_parser().parse_args(container["args"])
    assert args.command == "aggregator" and args.wait_for_services >= 60
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] > args.wait_for_services
