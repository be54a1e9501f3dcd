"""How the forwarder authenticates to the LRS: HTTP basic, or OAuth 2 client credentials.

xAPI 1.0.3 names both (basic for "the LRS's own accounts", OAuth for third parties; Learning Locker and
Ralph take basic, Veracity and Watershed also OAuth). The OAuth token is fetched on the first request,
kept until shortly before it expires, and fetched again once when the LRS answers 401 (a token revoked
early); a token endpoint that refuses the client is a misconfiguration, never a reason to dead-letter.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Generator
from urllib.parse import quote

import httpx

from .delivery import LrsMisconfigured, LrsUnavailable
from .settings import LrsSettings

EXPIRY_MARGIN_S = 30.0


class ClientCredentials(httpx.Auth):
    """``Authorization: Bearer <token>`` from an OAuth 2 client-credentials grant (RFC 6749 §4.4)."""

    requires_response_body = True

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None) -> None:
        self.token_url = token_url
        self.client_id, self.client_secret, self.scope = client_id, client_secret, scope
        self.token: str | None = None
        self.expires_at = 0.0
        self.fetched = 0

    def _token_request(self) -> httpx.Request:
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        # Client authentication by HTTP basic, which RFC 6749 §2.3.1 requires every server to accept.
        credentials = base64.b64encode(
            f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}".encode()
        ).decode()
        headers = {"Accept": "application/json", "Authorization": f"Basic {credentials}"}
        return httpx.Request("POST", self.token_url, data=data, headers=headers)

    def _take(self, response: httpx.Response) -> None:
        if response.status_code >= 500 or response.status_code == 429:
            raise LrsUnavailable(f"OAuth token endpoint answered {response.status_code}")
        if response.status_code != 200:
            raise LrsMisconfigured(f"OAuth token endpoint refused the client: {response.status_code}")
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise LrsMisconfigured("OAuth token endpoint answered without an access_token") from None
        self.token = token
        lifetime = float(body.get("expires_in") or 3600)
        self.expires_at = time.monotonic() + max(0.0, lifetime - EXPIRY_MARGIN_S)
        self.fetched += 1

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.token is None or time.monotonic() >= self.expires_at:
            self._take((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: one fresh token, one retry
            self._take((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request


def lrs_auth(settings: LrsSettings) -> httpx.Auth | None:
    """The configured authentication (``None``: the LRS takes anonymous statements, e.g. behind a proxy)."""
    if settings.lrs_oauth_token_url is not None:
        assert settings.lrs_oauth_client_id is not None and settings.lrs_oauth_client_secret is not None
        return ClientCredentials(
            settings.lrs_oauth_token_url,
            settings.lrs_oauth_client_id,
            settings.lrs_oauth_client_secret.get_secret_value(),
            settings.lrs_oauth_scope,
        )
    if settings.lrs_username is not None and settings.lrs_password is not None:
        return httpx.BasicAuth(settings.lrs_username, settings.lrs_password.get_secret_value())
    return None
