"""Errors as ``application/problem+json`` (RFC 9457): the response, the handlers, the log record.

Every refusal carries a machine-readable ``code``; validation errors carry the field path.
Log records name the matched route's template and the code, never what the client sent.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import ApiProblem
from .models import FieldError, Problem

_log = logging.getLogger("studyin_analytics.aggregator.api.app")
"""The query API's logger (one name for all of its modules, as before the split into routers)."""

PROBLEM_MEDIA_TYPE = "application/problem+json"

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No usable bearer token (code says why)"},
    403: {"model": Problem, "description": "Valid token without the right (code says why)"},
    422: {"model": Problem, "description": "Invalid parameters; errors[].loc is the field path"},
}
UNDECODABLE_BODY = "Body cannot be decoded (e.g. not UTF-8); JSON that does not parse is 422 json_invalid"
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    400: {"model": Problem, "description": UNDECODABLE_BODY},
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
}


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[FieldError] | None = None,
) -> JSONResponse:
    body = Problem(
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        code=code,
        instance=instance,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def bad_request(code: str, detail: str, loc: list[str | int]) -> ApiProblem:
    error = FieldError(loc=loc, msg=detail, type=code)
    return ApiProblem(422, code, detail, extra={"errors": [error]})


def field_errors(errors: Any) -> list[FieldError]:
    out = []
    for item in errors:
        loc = [p if isinstance(p, int) else str(p) for p in item.get("loc", ())]
        out.append(FieldError(loc=loc, msg=str(item.get("msg", "invalid")), type=str(item.get("type", ""))))
    return out


def route_template(request: Request) -> str | None:
    """The matched route's template, for log records: never the raw path, which can hold anything."""
    template = getattr(request.scope.get("route"), "path_format", None)
    return str(template) if template else None


def log_refusal(request: Request, status: int, code: str, detail: str = "") -> None:
    """One record per refused request, at INFO (DEBUG off any route: scanners), without values.

    ``code`` is one of this code base's problem codes; the route is the template. The request's
    correlation id (echoed in ``X-Request-ID``) ties the record to the response.
    """
    route = route_template(request)
    level = logging.INFO if route is not None else logging.DEBUG
    _log.log(level, "refused %s: %d %s%s", route or "unrouted request", status, code, detail)


async def http_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = getattr(exc, "code", None) or HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    extra = getattr(exc, "extra", {})
    log_refusal(request, exc.status_code, code)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:  # Starlette names the first route of the path only; a path may have several
        headers = {**(headers or {}), "Allow": _allowed(request)}
    return problem_response(
        exc.status_code,
        code,
        str(exc.detail),
        instance=request.url.path,
        headers=headers,
        errors=extra.get("errors"),
    )


def _allowed(request: Request) -> str:
    path, methods = request.url.path, set()
    for route in request.app.router.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


async def validation_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    # The count only: field paths name what the client sent (unknown parameters too).
    log_refusal(request, 422, "validation_error", f" ({len(errors)} field errors)")
    return problem_response(
        422,
        "validation_error",
        "the request does not match the API's schema; see errors",
        instance=request.url.path,
        errors=errors,
    )


async def server_problem(request: Request, exc: Exception) -> JSONResponse:
    route = route_template(request) or "unrouted request"
    _log.error("unhandled %s on %s", type(exc).__name__, route, exc_info=exc)
    return problem_response(500, "internal_error", "internal error", instance=request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    """Every error of ``app`` as problem+json: HTTP errors, validation errors, anything unhandled."""
    app.add_exception_handler(StarletteHTTPException, http_problem)
    app.add_exception_handler(RequestValidationError, validation_problem)
    app.add_exception_handler(Exception, server_problem)
