"""The route template of a request (``http.route``): full, with every prefix, and never the raw path.

Resolved once per request, when the response starts (routing is done by then), by
:meth:`RouteResolver.resolve`:

* **The matched route** is ``scope["route"]`` (Starlette, FastAPI). FastAPI keeps routers added
  with ``include_router(prefix=...)`` as nested routes (0.16x) and puts the *original*,
  unprefixed route there; the prefixed template is in the route context it keeps in
  ``scope["fastapi"]``, read first. Older FastAPI copies the routes with their prefix.
* **Mounts** (``app.mount``, Starlette ``Mount``) add the *raw* matched path to ``root_path`` (ids
  included): their templates are found by matching the app's mounts again with the request's
  original path, and joined. A mount whose app matched nothing more specific (``StaticFiles``, a
  404 inside a sub-app) gives ``<mount template>/{path}``, as FastAPI's own telemetry does.
* **Routes the framework leaves out of the scope** (FastAPI's ``/openapi.json`` and ``/docs``)
  are matched again against the routes of their level: first full match, else first partial
  (wrong method), as Starlette's router does.
* **Nothing matched** (404 scans, a request answered by a middleware before routing):
  :data:`~.semconv.UNMATCHED_ROUTE`.

A server ``root_path`` (``uvicorn --root-path``) set outside the app stays in front, as it is
configuration, not request data. Matching again costs what the router's own matching did, and
only requests through a mount or without a route in the scope pay it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from starlette.routing import Host, Match, Mount

from .asgi_types import Scope
from .semconv import UNMATCHED_ROUTE

_log = logging.getLogger(__name__)


MAX_MOUNT_DEPTH = 16
"""Nested mounts followed when matching again (a cycle or absurd nesting gives up: unmatched)."""


def _fastapi_template(scope: Scope, route: Any) -> str | None:
    """The prefixed template FastAPI keeps for a route of an included router, if it is this request's."""
    fastapi_scope = scope.get("fastapi")
    if not isinstance(fastapi_scope, dict):
        return None
    context = fastapi_scope.get("effective_route_context")
    if context is None:
        return None
    if route is not None and getattr(context, "original_route", None) is not route:
        return None  # stale: a deeper level routed this request to another route
    template = getattr(getattr(context, "starlette_route", None), "path_format", None) or getattr(
        context, "path_format", None
    )
    return template if isinstance(template, str) and template else None


def leaf_template(scope: Scope, route: Any) -> str | None:
    """The template of the matched (innermost) route, relative to the app or mount that holds it."""
    template = _fastapi_template(scope, route)
    if template is not None:
        return template
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) and template else None


def _routes_of(app: Any) -> Sequence[Any] | None:
    routes = getattr(app, "routes", None)
    return routes if isinstance(routes, Sequence) else None


class RouteResolver:
    """Resolves the full route template of requests to one app (``routed_app``: what has ``.routes``)."""

    def __init__(self, routed_app: Any) -> None:
        self.routed_app = routed_app
        self.failures = 0

    def resolve(self, scope: Scope, entry_root_path: str, entry_path: str) -> str:
        """``entry_*``: ``root_path`` and ``path`` as the request entered the app (mounts change them)."""
        route = scope.get("route")
        if scope.get("root_path", "") == entry_root_path and not isinstance(route, Mount):
            # the common case: no mount, the router named the route (read inline when FastAPI left
            # no route context: this runs once per request)
            template = (
                getattr(route, "path_format", None) if "fastapi" not in scope else leaf_template(scope, route)
            )
            if type(template) is str and template:
                return entry_root_path + template
        try:
            template = self._match_again(scope, route, entry_root_path, entry_path)
        except Exception as exc:  # a custom route's matches() failing must not fail the request
            self.failures += 1
            if self.failures == 1:
                _log.warning("route template not resolved (%s); counted as unmatched", type(exc).__name__)
            return UNMATCHED_ROUTE
        return UNMATCHED_ROUTE if template is None else entry_root_path + template

    def _match_again(self, scope: Scope, route: Any, entry_root_path: str, entry_path: str) -> str | None:
        routes = _routes_of(self.routed_app)
        if routes is None:
            return None
        target_root = str(scope.get("root_path", ""))
        probe: dict[str, Any] = {
            "type": "http",
            "path": entry_path,
            "root_path": entry_root_path,
            "method": scope.get("method", ""),
            "headers": scope.get("headers") or [],
            "path_params": {},
        }
        prefix = ""
        mounted = False
        depth = 0
        while probe["root_path"] != target_root:  # follow the mounts the router went through
            depth += 1
            found = _mount_towards(routes, probe, target_root) if depth <= MAX_MOUNT_DEPTH else None
            if found is None:
                return None  # the request left the app's routes in a way this cannot follow
            mount, child = found
            if isinstance(mount, Mount):
                prefix += mount.path
                mounted = True
            probe.update(child)
            routes = mount.routes
        # A Mount in scope["route"] is where Starlette's router stopped; a deeper router that
        # does not name its routes in the scope (FastAPI's) may have matched one: match again.
        template = None if isinstance(route, Mount) else leaf_template(scope, route)
        if template is None:
            template = _match_leaf(routes, probe)
        if template is None:
            # the mounted app (StaticFiles, a sub-app's 404) matched nothing more specific
            return prefix + "/{path}" if mounted else None
        return prefix + template


def _mount_towards(routes: Sequence[Any], probe: Scope, target_root: str) -> tuple[Any, Scope] | None:
    """The first mount (or host) of ``routes`` that matches and leads towards ``target_root``."""
    for candidate in routes:
        if not isinstance(candidate, Mount | Host):
            continue
        match, child = candidate.matches(probe)
        if match is not Match.FULL:
            continue
        child_root = str(child.get("root_path", probe["root_path"]))
        if target_root.startswith(child_root) and (isinstance(candidate, Mount) or candidate.routes):
            return candidate, child
    return None


def _match_leaf(routes: Sequence[Any], probe: Scope) -> str | None:
    """Match a route the framework did not put in the scope: first full match, else first partial."""
    partial: str | None = None
    for candidate in routes:
        if isinstance(candidate, Mount | Host):
            continue
        template = getattr(candidate, "path_format", None)
        if not isinstance(template, str) or not template:
            continue
        match, _child = candidate.matches(probe)
        if match is Match.FULL:
            return template
        if match is Match.PARTIAL and partial is None:
            partial = template
    return partial
