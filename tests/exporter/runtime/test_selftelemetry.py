"""Self-telemetry: aggregator, gateway and API serve their metrics at /metrics after real work.

Against the real Redis and PostgreSQL; values that must move do (events committed equals the
workload), every metric of docs/operations-metrics.md appears with its Prometheus name and type,
no user value reaches any metric, and OTEL_METRICS_EXPORTER behaves as documented.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client.parser import text_string_to_metric_families

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import ConfigurationError, Settings
from studyin_analytics.aggregator.consumer.telemetry import AggregatorTelemetry
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.exporter.runtime.health import HealthServer
from studyin_analytics.exporter.runtime.selftelemetry import (
    CATALOGUE,
    SERVICE_AGGREGATOR,
    SERVICE_API,
    SERVICE_GATEWAY,
    SelfTelemetry,
    markdown_table,
)
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker, semconv
from tests.support import ROOT
from tests.support.api import LEARNER_A, Api, open_api
from tests.support.exporter import free_port, make_spans, wait_listening
from tests.support.gateway import serving

DOC = ROOT / "docs" / "operations-metrics.md"
TABLE_START = "<!-- metrics-table:start (generated from exporter/runtime/selftelemetry.py CATALOGUE) -->"
TABLE_END = "<!-- metrics-table:end -->"
PB = {"content-type": "application/x-protobuf"}
OVERVIEW = "/api/analytics/learning/overview"
SYSTEM = "/api/analytics/system/metrics"

Sample = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Sample, float]:
    """Every sample of a Prometheus exposition, keyed by name and labels (scope labels dropped)."""
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_scope_"))
            out[(s.name, labels)] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples(text).items() if n == name and wanted <= ls]
    assert found, f"no sample {name}{labels} in:\n{text}"
    return sum(found)


def assert_catalogue_present(text: str, service: str) -> None:
    """Every metric of ``service`` is in the exposition with the table's Prometheus name and type."""
    for spec in CATALOGUE:
        if service in spec.services:
            assert f"# TYPE {spec.prometheus_name} {spec.kind}\n" in text, spec.name
    other = {s.prometheus_name for s in CATALOGUE if service not in s.services}
    assert not [name for name in other if f"# TYPE {name} " in text], "another service's metrics"
    assert f'service_name="{service}"' in text  # target_info carries the resource


# --- aggregator -------------------------------------------------------------------------------------


def export_xp_events(settings: Settings, users: list[str]) -> None:
    """One xp_awarded event per user, each on its own span and bus entry."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))
    for i, user in enumerate(users):
        tracker.xp_awarded(user, i + 1, "quiz")
    provider.shutdown()


async def scrape(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


async def test_aggregator_metrics_follow_its_work(migrated: Settings) -> None:
    workload = 25
    export_xp_events(migrated, [f"learner-{i}" for i in range(workload)])
    r = redis.Redis.from_url(migrated.redis_url or "")
    (stream,) = stream_keys(migrated)
    async with Aggregator(migrated) as aggregator:
        telemetry = AggregatorTelemetry(aggregator)
        health = HealthServer(aggregator.status, "127.0.0.1", 0, metrics=telemetry)
        await health.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health.port}") as client:
                before = await scrape(client, "/metrics")
                assert value(before, "studyin_aggregator_lag") == workload  # one entry per event
                assert value(before, "studyin_aggregator_events_committed_total") == 0

                await aggregator.drain(timeout_s=30)
                text = await scrape(client, "/metrics")
                assert_catalogue_present(text, SERVICE_AGGREGATOR)
                assert value(text, "studyin_aggregator_events_committed_total") == workload
                assert value(text, "studyin_aggregator_entries_read_total") == workload
                batches = value(text, "studyin_aggregator_batches_committed_total")
                assert batches >= 1
                assert value(text, "studyin_aggregator_batch_commit_duration_seconds_count") == batches
                assert value(text, "studyin_aggregator_batch_commit_duration_seconds_sum") > 0
                assert value(text, "studyin_aggregator_events_duplicate_total") == 0
                assert value(text, "studyin_aggregator_lag") == 0
                assert value(text, "studyin_aggregator_dependency_up", db_system_name="redis") == 1
                assert value(text, "studyin_aggregator_dependency_up", db_system_name="postgresql") == 1

                # A duplicated entry is skipped, an undecodable one dead-lettered: both counted.
                first: Any = r.xrange(stream, count=1)
                r.xadd(stream, first[0][1])
                r.xadd(stream, {b"v": b"1", b"n": b"1", b"d": b"not msgpack"})
                await aggregator.drain(timeout_s=30)
                text = await scrape(client, "/metrics")
                assert value(text, "studyin_aggregator_events_committed_total") == workload
                assert value(text, "studyin_aggregator_events_duplicate_total") == 1
                assert value(text, "studyin_aggregator_entries_dead_lettered_total") == 1
                assert value(text, "studyin_aggregator_dead_letter_length") == 1
                # The duplicate's round meets the stored events and is rolled back; the entry,
                # re-read and committed the careful way, counts once.
                assert value(text, "studyin_aggregator_entries_read_total") == workload + 2
        finally:
            await health.stop()
            await telemetry.close()
            r.close()


async def test_aggregator_without_telemetry_still_works_and_health_has_no_metrics(
    migrated: Settings,
) -> None:
    async with Aggregator(migrated) as aggregator:
        assert aggregator.on_transaction is None
        health = HealthServer(aggregator.status, "127.0.0.1", 0)
        await health.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health.port}") as client:
                assert (await client.get("/metrics")).status_code == 404
                assert (await client.get("/healthz")).status_code == 200
        finally:
            await health.stop()


def test_aggregator_command_serves_and_pushes_its_metrics(
    migrated: Settings, otlp_receiver: tuple[int, list[tuple[str, bytes]]], tmp_path: Path
) -> None:
    """The real ``studyin-analytics aggregator``: /metrics on the health port, pushes, last push at exit."""
    receiver_port, bodies = otlp_receiver
    workload = 7
    export_xp_events(migrated, [f"cli-learner-{i}" for i in range(workload)])
    health_port = free_port()
    env = {
        **os.environ,
        **migrated.environment(),
        "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": str(health_port),
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{receiver_port}/v1/metrics",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
    log = tmp_path / "aggregator.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "studyin_analytics.aggregator.cli",
                "aggregator",
                "--consumer-name",
                "cli-0",
            ],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(health_port, 60, process)
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = httpx.get(f"http://127.0.0.1:{health_port}/metrics").text
            settled = (
                "studyin_aggregator_lag{" in text and "studyin_aggregator_events_committed_total{" in text
            )
            # The gauges are one health check old: wait until both show the drained bus.
            committed = settled and value(text, "studyin_aggregator_events_committed_total") == workload
            if committed and value(text, "studyin_aggregator_lag") == 0:
                break
            time.sleep(0.1)
        assert value(text, "studyin_aggregator_events_committed_total") == workload, log.read_text()
        assert value(text, "studyin_aggregator_lag") == 0
        assert 'service_instance_id="cli-0"' in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert bodies, "nothing was pushed"
    last = ExportMetricsServiceRequest.FromString(bodies[-1][1])
    pushed = {m.name: m for rm in last.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert pushed["studyin.aggregator.events.committed"].sum.data_points[0].as_int == workload
    assert pushed["studyin.aggregator.lag"].gauge.data_points[0].as_int == 0  # gauges are pushed too


# --- gateway ----------------------------------------------------------------------------------------


async def test_gateway_metrics_count_requests_spans_and_bytes(gateway: httpx.AsyncClient) -> None:
    body = encode_spans(make_spans(5, prefix="m")).SerializeToString()
    assert (await gateway.post("/v1/traces", content=body, headers=PB)).status_code == 200
    bad = b"plain text"
    response = await gateway.post("/v1/traces", content=bad, headers={"content-type": "text/plain"})
    assert response.status_code == 415
    text = await scrape(gateway, "/metrics")
    assert_catalogue_present(text, SERVICE_GATEWAY)
    assert value(text, "studyin_gateway_spans_accepted_total") == 5
    assert value(text, "studyin_gateway_spans_rejected_total") == 0
    assert value(text, "studyin_gateway_redis_failures_total") == 0
    ok = {"studyin_outcome": "accepted", "http_response_status_code": "200"}
    assert value(text, "studyin_gateway_requests_total", **ok) == 1
    rejected = {"studyin_outcome": "rejected", "http_response_status_code": "415"}
    assert value(text, "studyin_gateway_requests_total", **rejected) == 1
    route = {"http_route": "/v1/traces", "http_request_method": "POST"}
    assert value(text, "http_server_request_duration_seconds_count", **route) == 2
    assert value(text, "http_server_request_body_size_bytes_sum", **route) == len(body) + len(bad)


async def test_gateway_counts_redis_failures(settings: Settings) -> None:
    down = settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    app = create_gateway(down)
    async with serving(app) as client:
        body = encode_spans(make_spans(2)).SerializeToString()
        assert (await client.post("/v1/traces", content=body, headers=PB)).status_code == 503
        text = await scrape(client, "/metrics")
    assert value(text, "studyin_gateway_redis_failures_total") == 1
    assert value(text, "studyin_gateway_spans_accepted_total") == 0
    unavailable = {"studyin_outcome": "unavailable", "http_response_status_code": "503"}
    assert value(text, "studyin_gateway_requests_total", **unavailable) == 1
    assert value(text, "http_server_request_duration_seconds_count", error_type="503") == 1


# --- API --------------------------------------------------------------------------------------------


async def test_api_metrics_time_routes_and_count_audit_writes(api: Api) -> None:
    assert (await api.client.get(OVERVIEW, headers=api.auth(LEARNER_A))).status_code == 200
    assert (await api.client.get(OVERVIEW, headers=api.auth(LEARNER_A))).status_code == 200
    assert (await api.client.get(OVERVIEW)).status_code == 401
    assert (await api.client.get(SYSTEM, headers=api.auth(LEARNER_A))).status_code == 403
    assert (await api.client.get("/no/such/path")).status_code == 404
    text = await scrape(api.client, "/metrics")
    assert_catalogue_present(text, SERVICE_API)
    duration = "http_server_request_duration_seconds_count"
    assert value(text, duration, http_route=OVERVIEW, http_response_status_code="200") == 2
    assert value(text, duration, http_route=OVERVIEW, http_response_status_code="401") == 1
    assert value(text, duration, http_route=SYSTEM, http_response_status_code="403") == 1
    unmatched = [
        ls
        for (n, ls), _ in samples(text).items()
        if n == duration and ("http_response_status_code", "404") in ls
    ]
    assert unmatched and all(dict(ls).get("http_route", "") == "" for ls in unmatched)  # no raw path
    audit = "studyin_api_audit_writes_total"
    allowed = {"http_route": OVERVIEW, "studyin_audit_scope": "user", "studyin_outcome": "allowed"}
    assert value(text, audit, **allowed) == 2
    denied = {"http_route": SYSTEM, "studyin_audit_scope": "system", "studyin_outcome": "denied"}
    assert value(text, audit, **denied) == 1
    assert "/metrics" not in (await api.client.get("/openapi.json")).json()["paths"]


# --- privacy ----------------------------------------------------------------------------------------

RAW_ID = "canary-metrics-user-27182"
RAW_EMAIL = "canary.metrics@example.org"


async def test_no_user_value_in_any_metric(migrated: Settings) -> None:
    pseudonym = Pseudonymizer.from_settings(migrated).pseudonymize(RAW_ID)
    # Through the gateway (a raw user.id the guard turns into a pseudonym) ...
    spans = make_spans(3, prefix="p", users=(pseudonym,))
    request = encode_spans(spans)
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.attributes.add(key="user.id").value.string_value = RAW_ID
                span.attributes.add(key="user.email").value.string_value = RAW_EMAIL
    texts: list[str] = []
    app = create_gateway(migrated)
    async with serving(app) as client:
        body = request.SerializeToString()
        assert (await client.post("/v1/traces", content=body, headers=PB)).status_code == 200
        texts.append(await scrape(client, "/metrics"))
    # ... the tracker path and the aggregator ...
    export_xp_events(migrated, [RAW_ID, RAW_ID])
    async with Aggregator(migrated) as aggregator:
        telemetry = AggregatorTelemetry(aggregator)
        health = HealthServer(aggregator.status, "127.0.0.1", 0, metrics=telemetry)
        await health.start()
        try:
            await aggregator.drain(timeout_s=30)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health.port}") as client:
                texts.append(await scrape(client, "/metrics"))
        finally:
            await health.stop()
            await telemetry.close()
    assert value(texts[-1], "studyin_aggregator_events_committed_total") == 5
    # ... and the API, with the raw id in the token, the query string and an unknown path.
    async for api in open_api(migrated):
        headers = api.auth(RAW_ID)
        assert (await api.client.get(f"{OVERVIEW}?days=7", headers=headers)).status_code == 200
        await api.client.get(f"{OVERVIEW}?days=7&who={RAW_ID}", headers=headers)
        await api.client.get(f"/api/analytics/users/{RAW_ID}/{RAW_EMAIL}", headers=headers)
        await api.client.get(f"{OVERVIEW}?subject={pseudonym}", headers=api.auth("staff-1", roles=["staff"]))
        texts.append(await scrape(api.client, "/metrics"))
    for text in texts:
        for secret in (RAW_ID, RAW_EMAIL, pseudonym, pseudonym.split(":")[1], semconv.USER_HASH, "user_hash"):
            assert secret not in text


# --- configuration ----------------------------------------------------------------------------------


def test_no_global_meter_provider_and_separate_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    before = metrics.get_meter_provider()
    api, gateway = SelfTelemetry(SERVICE_API), SelfTelemetry(SERVICE_GATEWAY)
    try:
        assert metrics.get_meter_provider() is before
        api.meter.create_counter("probe.api").add(1)
        assert b"probe_api" in api.render()[0]
        assert b"probe_api" not in gateway.render()[0]
    finally:
        api.shutdown()
        gateway.shutdown()


@pytest.mark.parametrize("setting", [None, "none", "prometheus", "none,"])
def test_unset_or_none_pushes_nothing(monkeypatch: pytest.MonkeyPatch, setting: str | None) -> None:
    if setting is None:
        monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", setting.rstrip(","))
    telemetry = SelfTelemetry(SERVICE_GATEWAY)
    try:
        assert telemetry.pushing == []
        assert telemetry.render()[1].startswith("text/plain")  # /metrics is always there
    finally:
        telemetry.shutdown()


def test_unknown_exporter_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "no_such_exporter")
    with pytest.raises(ConfigurationError, match="OTEL_METRICS_EXPORTER"):
        SelfTelemetry(SERVICE_API)


def test_cli_exits_2_on_an_unknown_exporter(settings: Settings) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "OTEL_METRICS_EXPORTER": "no_such_exporter",
        "STUDYIN_ANALYTICS_REDIS_URL": settings.redis_url or "",
        "STUDYIN_ANALYTICS_PSEUDONYM_KEYS": "k1=0123456789abcdef0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "studyin_analytics.aggregator.cli", "gateway", "--port", "0"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert b"OTEL_METRICS_EXPORTER" in result.stderr


async def test_otlp_pushes_the_same_metrics(
    monkeypatch: pytest.MonkeyPatch, otlp_receiver: tuple[int, list[tuple[str, bytes]]], settings: Settings
) -> None:
    port, bodies = otlp_receiver
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"http://127.0.0.1:{port}/v1/metrics")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # only the flush at shutdown
    app = create_gateway(settings)
    assert len(app.state.telemetry.telemetry.pushing) == 1
    async with serving(app) as client:
        body = encode_spans(make_spans(4)).SerializeToString()
        assert (await client.post("/v1/traces", content=body, headers=PB)).status_code == 200
    # Leaving the lifespan shut the provider down: its last export went out.
    await asyncio.sleep(0)
    assert bodies and bodies[-1][0] == "/v1/metrics"
    exported = ExportMetricsServiceRequest.FromString(bodies[-1][1])
    (resource_metrics,) = exported.resource_metrics
    resource = {a.key: a.value.string_value for a in resource_metrics.resource.attributes}
    assert resource["service.name"] == SERVICE_GATEWAY
    assert resource["service.instance.id"] and resource["service.version"]
    points = {m.name: m for scope in resource_metrics.scope_metrics for m in scope.metrics}
    assert points["studyin.gateway.spans.accepted"].sum.data_points[0].as_int == 4
    assert "http.server.request.duration" in points


# --- docs and deployment ----------------------------------------------------------------------------


def test_docs_table_is_the_catalogue() -> None:
    text = DOC.read_text()
    assert TABLE_START in text and TABLE_END in text
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip("\n") + "\n"
    assert table == markdown_table(), (
        "docs/operations-metrics.md is out of date; regenerate the table with "
        "python -c 'from studyin_analytics.exporter.runtime.selftelemetry import markdown_table; "
        "print(markdown_table())'"
    )


def test_kubernetes_pods_are_scraped_on_their_service_port() -> None:
    text = (ROOT / "deploy" / "kubernetes" / "studyin-analytics.yaml").read_text()
    scraped = {}
    for doc in yaml.safe_load_all(text):
        if not doc or doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        template = doc["spec"]["template"]
        container = template["spec"]["containers"][0]
        if not container["image"].startswith("registry.example/studyin-analytics"):
            continue
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
        scraped[container["args"][0]] = int(annotations["prometheus.io/port"])
    assert set(scraped) == {"aggregator", "api", "gateway"}
