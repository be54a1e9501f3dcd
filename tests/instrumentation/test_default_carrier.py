"""Which carrier a tracker built without one gets (issue 16): the log-record carrier when a logger provider
exports log records (zero-code: the distro's ``OTEL_LOGS_EXPORTER=studyin_redis``), span events and one
warning otherwise."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry._logs import NoOpLoggerProvider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.instrumentation import LogRecordCarrier, SpanEventCarrier, StudyInTracker, carriers
from studyin_analytics.instrumentation.carriers import SPAN_EVENTS_WARNING, default_carrier, new_event_uid
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support import ROOT
from tests.support.default_carrier_app import MATERIAL, USER
from tests.support.instrumented_app import analytics_env, read_spans
from tests.support.pipeline import PSEUDONYMIZER, Pipeline


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == carriers.__name__ and r.levelno >= logging.WARNING
    ]


@pytest.mark.unit
def test_without_a_logger_provider_a_tracker_records_span_events_and_warns_once(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture, unwarned: None
) -> None:
    with caplog.at_level(logging.WARNING, logger=carriers.__name__):
        first = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
        second = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    assert type(first.carrier) is SpanEventCarrier and type(second.carrier) is SpanEventCarrier
    assert _warnings(caplog) == [SPAN_EVENTS_WARNING]  # once per process, not per tracker
    assert "OTEL_LOGS_EXPORTER=studyin_redis" in SPAN_EVENTS_WARNING and "carrier=" in SPAN_EVENTS_WARNING
    with first.session("student-default-1") as session:
        first.material_view("student-default-1", "cardio-101", "video", session=session)
    (span,) = pipeline.spans()
    assert [e.name for e in span.events] == [
        "studyin.session_start",
        "studyin.material_view",
        "studyin.session_end",
    ]


@pytest.mark.unit
@pytest.mark.parametrize(
    "provider",
    [NoOpLoggerProvider(), LoggerProvider(shutdown_on_exit=False)],  # the SDK's, with no processor
    ids=["no-op", "sdk-without-processor"],
)
def test_a_provider_that_exports_nothing_gives_span_events(
    provider: object, pipeline: Pipeline, caplog: pytest.LogCaptureFixture, unwarned: None
) -> None:
    tracer = pipeline.tracer_provider.get_tracer("test")
    with caplog.at_level(logging.WARNING, logger=carriers.__name__):
        carrier = default_carrier(tracer, logger_provider=provider)  # type: ignore[arg-type]
    assert type(carrier) is SpanEventCarrier
    assert _warnings(caplog) == [SPAN_EVENTS_WARNING]


@pytest.mark.unit
def test_a_disabled_sdk_gives_span_events(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(InMemoryLogRecordExporter()))
    carrier = default_carrier(pipeline.tracer_provider.get_tracer("test"), logger_provider=provider)
    assert type(carrier) is SpanEventCarrier


@pytest.mark.unit
def test_a_provider_with_a_processor_gives_log_records_and_no_warning(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture, unwarned: None
) -> None:
    exported = InMemoryLogRecordExporter()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    with caplog.at_level(logging.WARNING, logger=carriers.__name__):
        carrier = default_carrier(pipeline.tracer_provider.get_tracer("test"), logger_provider=provider)
    assert type(carrier) is LogRecordCarrier and _warnings(caplog) == []
    tracker = StudyInTracker(
        tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER, carrier=carrier
    )
    tracker.xp_awarded("student-default-2", 10, "quiz")  # no span: a log record, exported at once
    assert [r.log_record.event_name for r in exported.get_finished_logs()] == ["studyin.xp_awarded"]
    assert pipeline.spans() == []


@pytest.mark.unit
def test_event_uids_are_128_random_bits_and_never_repeat() -> None:
    uids = [new_event_uid() for _ in range(3000)]  # several blocks of 256
    assert len(set(uids)) == len(uids)
    assert all(len(u) == 32 and int(u, 16) >= 0 for u in uids)


@pytest.mark.unit
def test_a_forked_child_draws_uids_of_its_own() -> None:
    new_event_uid()  # the parent's block is started
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next uids, to the parent
        try:
            os.write(write, "".join(new_event_uid() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(new_event_uid() for _ in range(8))
    assert len(child) == len(parent) == 8 * 32 and child != parent


def _zero_code_app(settings: Settings, tmp_path: Path, **otel: str) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        **analytics_env(settings),
        "STUDYIN_ANALYTICS_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_PYTHON_DISTRO": "studyin",  # the distro's defaults, traces and logs to the bus
        "OTEL_PYTHON_CONFIGURATOR": "studyin",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        **otel,
    }
    command = [
        str(Path(sys.executable).with_name("opentelemetry-instrument")),
        sys.executable,
        "-m",
        "tests.support.default_carrier_app",
    ]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGKILL)
    _out, err = process.communicate(timeout=30)
    return err


def test_zero_code_defaults_send_events_of_an_open_session_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    process = _zero_code_app(settings, tmp_path)  # OTEL_LOGS_EXPORTER unset: the distro's studyin_redis
    try:
        assert process.stdout is not None
        chosen = process.stdout.readline().strip()
        records = read_spans(settings, want=2, timeout_s=30.0)
        alive = process.poll() is None
    finally:
        err = _stop(process)
    assert chosen == "LogRecordCarrier", err[-2000:]
    assert alive, err[-2000:]  # they left while the session was open, nothing flushed at exit
    assert sorted(r.events[0].name for r in records if r.log is not None) == [
        "studyin.material_view",
        "studyin.session_start",
    ], err[-2000:]
    (view,) = [r for r in records if r.events[0].name == "studyin.material_view"]
    assert view.events[0].attributes["studyin.material.id"] == MATERIAL
    assert view.events[0].attributes["user.hash"] == Pseudonymizer.from_settings(settings).pseudonymize(USER)
    assert "studyin.event.uid" not in view.events[0].attributes  # it became the row's identity
    assert view.log is not None and view.log.trace_id is not None  # correlated with the session's span
    assert SPAN_EVENTS_WARNING not in err


def test_zero_code_with_logs_off_keeps_span_events_and_says_what_to_set(
    settings: Settings, tmp_path: Path
) -> None:
    process = _zero_code_app(settings, tmp_path, OTEL_LOGS_EXPORTER="none")
    try:
        assert process.stdout is not None
        chosen = process.stdout.readline().strip()
    finally:
        err = _stop(process)
    assert chosen == "SpanEventCarrier", err[-2000:]
    assert SPAN_EVENTS_WARNING in err
