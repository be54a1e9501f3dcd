"""Bearer-token authentication of the query API.

Tokens are JWTs (HS256 with a shared secret, or RS256 with a public key, from settings)
checked for signature, expiry, audience and issuer. ``sub`` is the StudyIn user id; it is
pseudonymized at once and only the pseudonyms are used afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from fastapi import HTTPException, Request, status

from ..instrumentation.privacy import Pseudonymizer
from ..instrumentation.settings import Settings


@dataclass(frozen=True)
class Principal:
    """The caller: pseudonyms under every configured key (active first) and roles."""

    user_hashes: tuple[str, ...]
    roles: frozenset[str]
    is_staff: bool

    @property
    def user_hash(self) -> str:
        return self.user_hashes[0]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


class TokenVerifier:
    def __init__(self, settings: Settings, pseudonymizer: Pseudonymizer) -> None:
        if settings.jwt_public_key:
            self._key: str = settings.jwt_public_key
            self._algorithms = ["RS256"]
        elif settings.jwt_secret is not None:
            self._key = settings.jwt_secret.get_secret_value()
            self._algorithms = ["HS256"]
        else:
            raise ValueError("set STUDYIN_ANALYTICS_JWT_SECRET or STUDYIN_ANALYTICS_JWT_PUBLIC_KEY")
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._staff_role = settings.staff_role
        self._pseudonymizer = pseudonymizer

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise _unauthorized("token is invalid") from None
        roles_claim = claims.get("roles", [])
        roles = (
            frozenset(r for r in roles_claim if isinstance(r, str))
            if isinstance(roles_claim, list)
            else frozenset()
        )
        return Principal(
            user_hashes=tuple(self._pseudonymizer.pseudonyms(str(claims["sub"]))),
            roles=roles,
            is_staff=self._staff_role in roles,
        )

    def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if not header:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("authorization header must be 'Bearer <token>'")
        return self.verify(token.strip())
