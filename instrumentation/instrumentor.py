"""``StudyInInstrumentor``: zero-code instrumentation of every Starlette/FastAPI app.

Registered under the ``opentelemetry_instrumentor`` entry point as ``studyin``, so
``opentelemetry-instrument uvicorn app:app`` (with this package installed) instruments an
unmodified app; ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=studyin`` turns it off.

It patches ``Starlette.__call__`` and ``FastAPI.__call__`` (outside FastAPI's built-in
telemetry, which it turns off: that one records raw paths and queries): the first request of
each app builds one :class:`~.asgi.StudyInASGIMiddleware` around the app, so apps created
before ``instrument()`` are covered as well. Settings come from ``STUDYIN_ANALYTICS_*`` variables
(auth paths, metrics-only paths, user-id hook, pseudonym keys); ``instrument(**kwargs)`` accepts
the keyword arguments of :func:`~.asgi.instrument_app` to override them. Nothing here imports the
user-id hook: the middleware resolves it when the app starts, so a bad setting is one ERROR line
there and never an exception out of ``instrument()``, which OpenTelemetry's launcher would turn
into a silently skipped (import error, logged at DEBUG) or aborted instrumentation.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .accesslog import install_access_log_filter
from .asgi import disable_fastapi_native_telemetry, env_settings, middleware_options
from .asgi_types import ASGIApp, Receive, Scope, Send
from .middleware import SCOPE_MARK, StudyInASGIMiddleware


class StudyInInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments Starlette and FastAPI apps with StudyIn's ASGI rules (see the module docstring)."""

    _originals: ClassVar[dict[type, Any]] = {}

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.27",)

    def _instrument(self, **kwargs: Any) -> None:
        from starlette.applications import Starlette

        if StudyInInstrumentor._originals:
            return
        settings = env_settings()
        options = middleware_options(settings, **kwargs)
        # uvicorn's access log writes client addresses, query strings and raw paths.
        install_access_log_filter(settings.access_log if settings is not None else "route")
        classes: list[type] = [Starlette]
        try:
            # FastAPI overrides __call__ (its built-in telemetry runs there): wrap it outside that.
            from fastapi import FastAPI

            classes.append(FastAPI)
        except ImportError:  # pragma: no cover - fastapi is a dependency
            pass
        for cls in classes:
            original = cls.__dict__["__call__"]
            StudyInInstrumentor._originals[cls] = original
            cls.__call__ = _instrumented_call(cls, original, options)  # type: ignore[method-assign]

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls, original in StudyInInstrumentor._originals.items():
            cls.__call__ = original  # type: ignore[method-assign]
        StudyInInstrumentor._originals.clear()
        install_access_log_filter("off")

    @staticmethod
    def instrument_app(app: Any, **kwargs: Any) -> Any:
        """Instrument one app explicitly (same as :func:`~.asgi.instrument_app`)."""
        from .asgi import instrument_app

        return instrument_app(app, **kwargs)


def _instrumented_call(cls: type, original_call: Any, options: dict[str, Any]) -> Any:
    attribute = f"_studyin_middleware_{cls.__name__}"

    async def instrumented_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if SCOPE_MARK in scope or getattr(self, "_studyin_instrumented", False):
            # already measured further out, or instrument_app() did it explicitly
            await original_call(self, scope, receive, send)
            return
        middleware = self.__dict__.get(attribute)
        if middleware is None:
            app = self
            disable_fastapi_native_telemetry(app)

            async def inner(scope: Scope, receive: Receive, send: Send) -> None:
                await original_call(app, scope, receive, send)

            inner_app: ASGIApp = inner
            middleware = StudyInASGIMiddleware(inner_app, routed_app=app, **options)
            self.__dict__[attribute] = middleware
        await middleware(scope, receive, send)

    return instrumented_call
