"""Bearer-token authentication and authorization of the query API.

Tokens are JWTs signed with HS256 (shared secret) or RS256 (public key), both from settings;
each key is used only with its own algorithm, so an RS256 public key can never be replayed
as an HS256 secret. A token is checked for signature, expiry (``exp``, required), not-before,
audience and issuer. ``sub`` is the StudyIn user id; it is pseudonymized at once under every
configured key (key rotation) and only the pseudonyms are used afterwards.

Failures are precise: a missing or unusable credential is ``401`` with a ``code`` naming what
was wrong (``missing_token``, ``token_expired``, ``invalid_audience``...); a valid token that
lacks the right is ``403`` (``staff_role_required``, ``subject_forbidden``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import HTTPException, Request, status

from ...instrumentation.privacy import Pseudonymizer
from ...instrumentation.settings import ConfigurationError, Settings

JWT_LEEWAY_S = 30
"""Clock skew tolerated on ``exp``/``nbf``/``iat`` between the token issuer and this API."""

REALM = "studyin-analytics"


class ApiProblem(HTTPException):
    """An HTTP error rendered as ``application/problem+json`` with a machine-readable ``code``."""

    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.code = code
        self.extra = extra or {}


def unauthorized(code: str, detail: str) -> ApiProblem:
    """``401``: no usable credential. ``WWW-Authenticate`` follows RFC 6750."""
    if code == "missing_token":
        challenge = f'Bearer realm="{REALM}"'
    else:
        challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{detail}"'
    return ApiProblem(status.HTTP_401_UNAUTHORIZED, code, detail, headers={"WWW-Authenticate": challenge})


def forbidden(code: str, detail: str) -> ApiProblem:
    """``403``: the token is valid but does not grant this."""
    return ApiProblem(
        status.HTTP_403_FORBIDDEN,
        code,
        detail,
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'},
    )


@dataclass(frozen=True)
class Principal:
    """The caller: pseudonyms under every configured key (active first) and roles.

    ``user_id`` is the raw ``sub``; it stays inside this process (the event tracker
    pseudonymizes it) and is never logged, stored or returned.
    """

    user_hashes: tuple[str, ...]
    roles: frozenset[str]
    is_staff: bool
    user_id: str = ""
    expires_at: float | None = None
    """The token's ``exp`` (seconds since the epoch): a live feed ends then."""

    @property
    def user_hash(self) -> str:
        return self.user_hashes[0]

    def __repr__(self) -> str:  # never show the raw id
        return f"Principal(user_hash={self.user_hash!r}, roles={sorted(self.roles)!r})"


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    """The ``roles`` claim: a list of strings, or one string of roles separated by plain spaces.

    Only U+0020 separates (as in OAuth's ``scope``): ``str.split()`` would also split on a
    newline or a no-break space, so ``"reader\u00a0staff"`` would grant staff.
    """
    value = claims.get("roles", [])
    if isinstance(value, str):
        return frozenset(role for role in value.split(" ") if role)
    if isinstance(value, list):
        return frozenset(r for r in value if isinstance(r, str))
    return frozenset()


class TokenVerifier:
    """Verifies bearer tokens against the keys, audience and issuer in settings."""

    def __init__(self, settings: Settings, pseudonymizer: Pseudonymizer) -> None:
        self._keys: dict[str, Any] = {}
        if settings.jwt_secret is not None:
            self._keys["HS256"] = settings.jwt_secret.get_secret_value()
        if settings.jwt_public_key:
            try:
                self._keys["RS256"] = jwt.algorithms.RSAAlgorithm(
                    jwt.algorithms.RSAAlgorithm.SHA256
                ).prepare_key(settings.jwt_public_key)
            except (ValueError, TypeError, jwt.InvalidKeyError) as exc:
                raise ConfigurationError(
                    f"STUDYIN_ANALYTICS_JWT_PUBLIC_KEY is not an RSA public key: {type(exc).__name__}"
                ) from None
        if not self._keys:
            raise ConfigurationError("set STUDYIN_ANALYTICS_JWT_SECRET or STUDYIN_ANALYTICS_JWT_PUBLIC_KEY")
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._staff_role = settings.staff_role
        self._pseudonymizer = pseudonymizer

    @property
    def algorithms(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise unauthorized("malformed_token", "token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None or not isinstance(algorithm, str):
            raise unauthorized(
                "unsupported_algorithm",
                f"token algorithm is not accepted (accepted: {', '.join(self.algorithms)})",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=JWT_LEEWAY_S,
                # PyJWT >= 2.10 refuses a numeric sub as "invalid"; user ids may be numbers:
                # checked below, by name.
                options={"require": ["exp", "sub", "aud", "iss"], "verify_sub": False},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token_expired", "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("token_not_yet_valid", "token is not valid yet (nbf/iat)") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("invalid_audience", "token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise unauthorized("invalid_issuer", "token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized("missing_claim", f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("invalid_signature", "token signature does not verify") from None
        except jwt.InvalidTokenError:
            raise unauthorized("invalid_token", "token is invalid") from None
        sub = claims["sub"]
        if not isinstance(sub, str | int) or isinstance(sub, bool) or not str(sub).strip():
            raise unauthorized("invalid_subject", "token 'sub' must be a non-empty string or an integer")
        roles = _roles(claims)
        return Principal(
            user_hashes=tuple(self._pseudonymizer.pseudonyms(str(sub))),
            roles=roles,
            is_staff=self._staff_role in roles,
            user_id=str(sub),
            expires_at=float(claims["exp"]),
        )

    def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if not header:
            raise unauthorized("missing_token", "an 'Authorization: Bearer <token>' header is required")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized(
                "invalid_authorization_header", "authorization header must be 'Bearer <token>'"
            )
        return self.verify(token)


def require_staff(principal: Principal) -> None:
    """Raise ``403`` unless ``principal`` has the staff role."""
    if not principal.is_staff:
        raise forbidden("staff_role_required", "this endpoint needs the staff role")


def resolve_subject(principal: Principal, subject: str | None) -> tuple[str, ...]:
    """The pseudonyms whose rows the caller may read for ``subject`` (``None``: the caller).

    Everyone reads only their own individual data: the staff role grants system metrics and
    cohort-level aggregates, not other learners' rows (minimum necessary). A refused attempt
    is audited by the endpoint.
    """
    if subject is None or subject in principal.user_hashes:
        return principal.user_hashes
    raise forbidden("subject_forbidden", "individual data can be read only by its own learner")
