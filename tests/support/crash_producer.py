"""A producing app for the crash test (tests/faults/test_producer_crash.py), run as
``python -m tests.support.crash_producer CARRIER LEDGER``: long open learning sessions (started outside
any request, as the docs allow) and an open WebSocket span (an AI-coach chat), emitting events until it
is killed. Each event is a ``material_view`` with a unique material id, written to the ledger (id and
wall time, flushed) right after it was handed to the carrier. Settings from ``STUDYIN_ANALYTICS_*``;
the log processor's schedule delay from ``OTEL_BLRP_SCHEDULE_DELAY``."""

from __future__ import annotations

import sys
import time

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.exporter.log_exporter import batch_log_processor
from studyin_analytics.instrumentation import LogRecordCarrier, SpanEventCarrier, StudyInTracker

SESSIONS = 4
PAUSE_S = 0.01


def main(carrier_name: str, ledger_path: str) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(RedisStreamSpanExporter(), schedule_delay_millis=200)
    )
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(batch_log_processor())
    carrier = (
        LogRecordCarrier.create(tracer_provider, logger_provider)
        if carrier_name == "log"
        else SpanEventCarrier.create(tracer_provider)
    )
    tracker = StudyInTracker(tracer_provider=tracer_provider, carrier=carrier)
    users = [f"crash-learner-{n}" for n in range(SESSIONS)]
    sessions = [tracker.start_session(user) for user in users]
    socket = tracer_provider.get_tracer("app").start_span(
        "WebSocket /coach", kind=SpanKind.SERVER, attributes={"url.scheme": "wss", "url.path": "/coach"}
    )
    with open(ledger_path, "a", buffering=1) as ledger:
        n = 0
        while True:  # until SIGKILL
            material = f"m-{n}"
            if n % 5 == 4:  # in the chat: the WebSocket span is current
                with trace.use_span(socket, end_on_exit=False):
                    tracker.material_view("crash-chatter", material, "video")
            else:
                tracker.material_view(users[n % SESSIONS], material, "video", session=sessions[n % SESSIONS])
            ledger.write(f"{material} {time.time():.6f}\n")
            n += 1
            time.sleep(PAUSE_S)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
