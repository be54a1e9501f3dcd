"""``StudyInInstrumentor``: zero-code instrumentation of every Starlette/FastAPI app.

Registered under the ``opentelemetry_instrumentor`` entry point as ``studyin``, so
``opentelemetry-instrument uvicorn app:app`` (with this package installed) instruments an
unmodified app; ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=studyin`` turns it off.

It patches ``Starlette.__call__`` (FastAPI calls it too): the first request of each app
builds one :class:`~.asgi.StudyInASGIMiddleware` around the app, so apps created before
``instrument()`` are covered as well. Settings come from ``STUDYIN_ANALYTICS_*`` variables
(auth paths, metrics-only paths, user-id hook, pseudonym keys); ``instrument(**kwargs)`` accepts
the keyword arguments of :func:`~.asgi.instrument_app` to override them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .asgi import ASGIApp, Receive, Scope, Send, StudyInASGIMiddleware, _env_settings, middleware_options

_MIDDLEWARE_ATTRIBUTE = "_studyin_middleware"


class StudyInInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments Starlette and FastAPI apps with StudyIn's ASGI rules (see the module docstring)."""

    _original_call: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.27",)

    def _instrument(self, **kwargs: Any) -> None:
        from starlette.applications import Starlette

        if StudyInInstrumentor._original_call is not None:
            return
        options = middleware_options(_env_settings(), **kwargs)
        original_call = Starlette.__call__
        StudyInInstrumentor._original_call = original_call

        async def instrumented_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
            if getattr(self, "_studyin_instrumented", False):  # instrument_app() did it already
                await original_call(self, scope, receive, send)
                return
            middleware = self.__dict__.get(_MIDDLEWARE_ATTRIBUTE)
            if middleware is None:
                app = self

                async def inner(scope: Scope, receive: Receive, send: Send) -> None:
                    await original_call(app, scope, receive, send)

                inner_app: ASGIApp = inner
                middleware = StudyInASGIMiddleware(inner_app, **options)
                self.__dict__[_MIDDLEWARE_ATTRIBUTE] = middleware
            await middleware(scope, receive, send)

        Starlette.__call__ = instrumented_call  # type: ignore[method-assign]

    def _uninstrument(self, **kwargs: Any) -> None:
        from starlette.applications import Starlette

        original = StudyInInstrumentor._original_call
        if original is not None:
            Starlette.__call__ = original  # type: ignore[method-assign]
            StudyInInstrumentor._original_call = None

    @staticmethod
    def instrument_app(app: Any, **kwargs: Any) -> Any:
        """Instrument one app explicitly (same as :func:`~.asgi.instrument_app`)."""
        from .asgi import instrument_app

        return instrument_app(app, **kwargs)
