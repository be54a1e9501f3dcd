"""Support of the forwarder tests: learning events put on the bus the way the app's exporter puts them
(tracker with an LRS key -> SDK spans -> privacy guard -> wire entries), the forwarder's settings for a
Ralph server, and a small HTTP proxy in front of Ralph that can answer 503 for a while."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import redis
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.mapping import EventRow, rows_from_span
from studyin_analytics.aggregator.lrs.settings import LrsSettings
from studyin_analytics.aggregator.lrs.xapi import Skipped, StatementMapper
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.exporter.wire import decode_batch, encode_readable_spans, entry_fields
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker, events
from studyin_analytics.instrumentation.privacy import PrivacyGuard
from tests.support.lrs.ralph import RalphServer
from tests.support.lrs.samples import ANALYTICS_KEYS, CONFIG, LRS, UrandomIds

PSEUDONYMIZER = Pseudonymizer(ANALYTICS_KEYS["k2"], "k2", lrs=LRS)
MAPPER = StatementMapper(CONFIG)


def lrs_settings(settings: Settings, url: str, ralph: RalphServer, **changes: Any) -> LrsSettings:
    """The forwarder's settings on the test's bus and schema, for the LRS at ``url`` (Ralph or a proxy)."""
    values = {
        **settings.model_dump(),
        "lrs_url": url,
        "lrs_username": ralph.username,
        "lrs_password": ralph.password,
        "lrs_iri_base": CONFIG.iri_base,
        "lrs_home_page": CONFIG.home_page,
        "lrs_retry_max_s": 1.0,
        "claim_idle_ms": 2000,
        **changes,
    }
    return LrsSettings.model_validate(values)


def forwarder_environment(settings: LrsSettings) -> dict[str, str]:
    env = settings.environment(
        "redis_url",
        "stream_prefix",
        "stream_shards",
        "postgres_url",
        "postgres_schema",
        "lrs_url",
        "lrs_username",
        "lrs_password",
        "lrs_iri_base",
        "lrs_home_page",
        "lrs_retry_max_s",
        "lrs_read_entries",
        "lrs_batch_statements",
        "lrs_catch_up",
        "claim_idle_ms",
    )
    env["STUDYIN_ANALYTICS_LRS_HEALTH_PORT"] = "0"
    return env


@dataclass
class Published:
    rows: list[EventRow] = field(default_factory=list)
    entry_ids: list[str] = field(default_factory=list)

    @property
    def statement_ids(self) -> set[str]:
        """Ids of the statements the LRS must end with (each once)."""
        out = set()
        for row in self.rows:
            statement = MAPPER.map(row)
            if not isinstance(statement, Skipped):
                out.add(statement["id"])
        return out

    def __iadd__(self, other: Published) -> Published:
        self.rows += other.rows
        self.entry_ids += other.entry_ids
        return self


def learning_emissions(
    count: int, learners: int = 5
) -> Iterator[tuple[str, type[events.DomainEvent], dict[str, Any]]]:
    tag = uuid.uuid4().hex[:6]
    for i in range(count):
        user = f"learner-{tag}-{i % learners}"
        kind = i % 4
        if kind == 0:
            yield user, events.MaterialView, {"material_id": f"m-{tag}-{i}", "material_type": "pdf"}
        elif kind == 1:
            yield (
                user,
                events.MaterialProgress,
                {"material_id": f"m-{tag}-{i}", "material_type": "video", "progress": 0.5},
            )
        elif kind == 2:
            yield user, events.XpAwarded, {"xp_amount": i, "xp_reason": "quiz.correct"}
        else:
            yield user, events.StreakUpdated, {"streak_days": 1 + i % 30}


def publish(
    settings: Settings,
    emissions: Iterable[tuple[str, type[events.DomainEvent], dict[str, Any]]],
    spans_per_entry: int = 5,
) -> Published:
    """Emit with the tracker, export through the guard, XADD entries of ``spans_per_entry`` spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=UrandomIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=PSEUDONYMIZER)
    for user_id, model, fields in emissions:
        tracker.emit(model, user_id=user_id, **fields)
    spans = list(exporter.get_finished_spans())
    return publish_spans(settings, spans, spans_per_entry)


def publish_spans(settings: Settings, spans: Sequence[Any], spans_per_entry: int = 5) -> Published:
    guard = PrivacyGuard(PSEUDONYMIZER)
    out = Published()
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        (stream,) = stream_keys(settings)
        for start in range(0, len(spans), spans_per_entry):
            chunk = spans[start : start + spans_per_entry]
            blob = encode_readable_spans(chunk, guard)
            out.rows += [row for record in decode_batch(blob) for row in rows_from_span(record)]
            out.entry_ids.append(client.xadd(stream, entry_fields(blob, len(chunk))).decode())
    finally:
        client.close()
    return out


class FlakyProxy:
    """An HTTP proxy in front of the LRS (a thread of its own) that answers 503 while ``down`` is set."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.down = threading.Event()
        self.answered_503 = 0
        self.forwarded = 0
        self.tokens: set[str] = set()
        self.tokens_issued = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    oauth_client: tuple[str, str] | None = None
    """Set (client id, secret) to make the proxy an OAuth-protected LRS: ``POST /token`` grants client
    credentials, statements need ``Bearer <token>``, passed on to the LRS with ``lrs_auth``."""
    lrs_auth: tuple[str, str] | None = None

    def _token(self, request: Request, form: Any) -> Response:
        expected = "Basic " + base64.b64encode(":".join(self.oauth_client or ("", "")).encode()).decode()
        if request.headers.get("authorization") != expected or form.get("grant_type") != "client_credentials":
            return Response(b'{"error": "invalid_client"}', status_code=401)
        token = secrets.token_urlsafe(16)
        self.tokens.add(token)
        self.tokens_issued += 1
        return Response(f'{{"access_token": "{token}", "token_type": "Bearer", "expires_in": 600}}'.encode())

    def revoke(self) -> None:
        self.tokens.clear()

    def _app(self) -> Starlette:
        client = httpx.AsyncClient(base_url=self.target, timeout=120)

        async def proxy(request: Request) -> Response:
            if self.down.is_set():
                self.answered_503 += 1
                return Response(b'{"detail": "maintenance"}', status_code=503)
            if self.oauth_client is not None:
                if request.url.path == "/token":
                    form = dict(parse_qsl((await request.body()).decode()))  # no python-multipart here
                    return self._token(request, form)
                bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
                if bearer not in self.tokens:
                    return Response(b'{"detail": "invalid token"}', status_code=401)
            body = await request.body()
            headers = {
                k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
            }
            if self.lrs_auth is not None:
                basic = base64.b64encode(":".join(self.lrs_auth).encode()).decode()
                headers["authorization"] = f"Basic {basic}"
            answer = await client.request(
                request.method, request.url.path, params=request.query_params, content=body, headers=headers
            )
            self.forwarded += 1
            kept = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() in ("content-type", "x-experience-api-version")
            }
            return Response(answer.content, status_code=answer.status_code, headers=kept)

        return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "PUT"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/xAPI"

    def start(self) -> None:
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)  # type: ignore[union-attr]
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
                return
            threading.Event().wait(0.01)
        raise RuntimeError("proxy did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


@contextmanager
def flaky_proxy(target: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(target)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
