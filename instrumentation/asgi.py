"""ASGI auto-instrumentation for StudyIn apps, built on ``opentelemetry-instrumentation-asgi``.

:func:`instrument_app` wraps an ASGI app in the stock ``OpenTelemetryMiddleware`` (server
span and ``http.server.request.duration`` per request, templated ``http.route``) and adds
StudyIn's rules: the user is attributed only as ``user.hash`` and never on authentication
endpoints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import TracerProvider
from opentelemetry.util.http import get_excluded_urls

from . import semconv
from .privacy import Pseudonymizer

Scope = MutableMapping[str, Any]
ASGIApp = Callable[..., Any]
UserIdHook = Callable[[Scope], str | int | None]

DEFAULT_AUTH_PATTERNS: tuple[str, ...] = (
    r"/auth(/|$)",
    r"/login",
    r"/logout",
    r"/token",
    r"/register",
    r"/signup",
    r"/password",
    r"/oauth",
    r"/sso",
    r"/mfa",
)
"""Paths whose requests are measured but never attributed to a user (regex, searched)."""


def default_user_id_hook(scope: Scope) -> str | int | None:
    """The authenticated user id from ``scope["state"]["user_id"]`` or Starlette's ``scope["user"]``."""
    state = scope.get("state")
    if isinstance(state, dict) and state.get("user_id") is not None:
        return state["user_id"]  # type: ignore[no-any-return]
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        identity = getattr(user, "identity", None)
        return identity if isinstance(identity, str | int) else None
    return None


class _UserAttribution:
    """Sets ``user.hash`` on the server span once the app has authenticated the request."""

    def __init__(
        self,
        app: ASGIApp,
        pseudonymizer: Pseudonymizer | Callable[[], Pseudonymizer],
        user_id_hook: UserIdHook,
        auth_patterns: Iterable[str],
    ) -> None:
        self.app = app
        self._pseudonymizer = pseudonymizer
        self._hook = user_id_hook
        self._auth = re.compile("|".join(f"(?:{p})" for p in auth_patterns)) if auth_patterns else None

    def _pseudonym(self, user_id: str | int) -> str:
        pseudonymizer = self._pseudonymizer
        if not isinstance(pseudonymizer, Pseudonymizer):
            pseudonymizer = self._pseudonymizer = pseudonymizer()
        return pseudonymizer.pseudonymize(str(user_id))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()
        anonymous = self._auth is not None and self._auth.search(scope.get("path", "")) is not None

        async def attributing_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and span.is_recording():
                # The stock middleware never sets http.route on the span; the router has
                # matched by now, so the template is known.
                path_format = getattr(scope.get("route"), "path_format", None)
                if path_format:
                    route = scope.get("root_path", "") + path_format
                    span.set_attribute("http.route", route)
                    span.update_name(f"{scope.get('method', 'HTTP')} {route}")
                user_id = None if anonymous else self._hook(scope)
                if user_id is not None:
                    span.set_attribute(semconv.USER_HASH, self._pseudonym(user_id))
            await send(message)

        await self.app(scope, receive, attributing_send)


def instrument_app(
    app: ASGIApp,
    *,
    tracer_provider: TracerProvider | None = None,
    pseudonymizer: Pseudonymizer | None = None,
    user_id_hook: UserIdHook = default_user_id_hook,
    auth_patterns: Iterable[str] = DEFAULT_AUTH_PATTERNS,
    excluded_urls: str | None = None,
) -> ASGIApp:
    """Return ``app`` wrapped for StudyIn telemetry.

    Excluded URLs default to ``OTEL_PYTHON_ASGI_EXCLUDED_URLS`` (then ``OTEL_PYTHON_EXCLUDED_URLS``).
    """
    from .settings import get_settings

    inner = _UserAttribution(
        app,
        pseudonymizer or (lambda: Pseudonymizer.from_settings(get_settings())),
        user_id_hook,
        tuple(auth_patterns),
    )
    return OpenTelemetryMiddleware(
        inner,
        excluded_urls=excluded_urls if excluded_urls is not None else get_excluded_urls("ASGI"),
        tracer_provider=tracer_provider,
        exclude_spans=["receive", "send"],
    )
