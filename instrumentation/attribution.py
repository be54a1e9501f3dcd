"""Which user a request is attributed to: :func:`set_user` from the app's code, else the user-id hook.

* :func:`set_user` is the one call for apps that find the user in their own auth code, such as
  FastAPI's ``Depends(get_current_user)``: it pseudonymizes the id at once and puts the pseudonym
  on the request being served (the raw id is kept nowhere). It finds that request through a
  context variable the ASGI middleware sets, so it works in async and sync (thread-pool)
  dependencies alike, from any depth of the call stack.
* The hook (``STUDYIN_ANALYTICS_USER_ID_HOOK``, default :func:`default_user_id_hook`) runs when
  the response starts, for requests :func:`set_user` did not attribute.

A hook setting that cannot be used (module not importable, function missing or not callable, no
``:``) is one ERROR line at start-up naming the setting and the reason; the app then runs
instrumented, without the hook (see :func:`resolve_user_id_hook` for why it does not stop).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol, cast

from .asgi_types import Scope
from .settings import ConfigurationError

_log = logging.getLogger(__name__)

UserIdHook = Callable[[Scope], str | int | None]

HOOK_SETTING = "STUDYIN_ANALYTICS_USER_ID_HOOK"


def default_user_id_hook(scope: Scope) -> str | int | None:
    """The authenticated user id from ``scope["state"]["user_id"]`` or Starlette's ``scope["user"]``."""
    state = scope.get("state")
    if isinstance(state, dict):
        user_id = state.get("user_id")
        if isinstance(user_id, str | int) and not isinstance(user_id, bool):
            return user_id
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        identity = getattr(user, "identity", None)
        return identity if isinstance(identity, str | int) else None
    return None


def load_user_id_hook(reference: str) -> UserIdHook:
    """Import ``module:function``; :class:`ConfigurationError` with a one-line reason otherwise."""
    module_name, colon, attribute = reference.strip().partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(f"{HOOK_SETTING}={reference!r} must be 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing: say which and why
        raise ConfigurationError(
            f"{HOOK_SETTING}={reference!r}: module {module_name!r} cannot be imported "
            f"({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"{HOOK_SETTING}={reference!r}: {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise ConfigurationError(
            f"{HOOK_SETTING}={reference!r} is not callable (it is a {type(target).__name__})"
        )
    return cast(UserIdHook, target)


@functools.cache
def resolve_user_id_hook(reference: str) -> UserIdHook | None:
    """The hook named by the setting, or ``None`` after one ERROR line (once per process and value).

    Why not stop the app: analytics must never take the learning app down, and everything but
    the hook's attribution (latency, errors, domain events, :func:`set_user`) stays correct; the
    error is at start-up (the middleware resolves the hook when the app starts), loud, and says
    what to fix. It never silently disables anything.
    """
    try:
        return load_user_id_hook(reference)
    except ConfigurationError as exc:
        _log.error("%s; requests are not attributed by the hook until this is fixed", exc)
        return None


class _Attributor(Protocol):
    def attribute(self, user_id: str | int) -> bool: ...


_CURRENT_REQUEST: ContextVar[_Attributor | None] = ContextVar("studyin_analytics_request", default=None)


def current_request_slot() -> ContextVar[_Attributor | None]:
    """The context variable the ASGI middleware sets to the request being served."""
    return _CURRENT_REQUEST


def set_user(user_id: str | int | None) -> bool:
    """Attribute the HTTP request being served to ``user_id`` (pseudonymized at once); ``True`` if done.

    Call it from the app's own authentication code, typically the dependency that resolves the
    user (``Depends(get_current_user)``). It does nothing (``False``) outside a request the
    StudyIn middleware measures with a span, on authentication paths (never attributed), for an
    empty id, or without a pseudonym key. The last call of a request wins; it takes precedence
    over the user-id hook.
    """
    request = _CURRENT_REQUEST.get()
    if request is None or user_id is None or isinstance(user_id, bool) or user_id == "":
        return False
    return request.attribute(user_id)
