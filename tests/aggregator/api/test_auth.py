"""Authentication and authorization of the query API: precise 401s, distinct 403s, audit of denials."""

from __future__ import annotations

from datetime import timedelta

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from studyin_analytics.aggregator.api import audit
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.instrumentation import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support.api import LEARNER_A, LEARNER_B, STAFF, Api, bearer, open_api, token

OVERVIEW = "/api/analytics/learning/overview"
SYSTEM = "/api/analytics/system/metrics"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    return body


async def test_every_unusable_token_is_a_precise_401(api: Api) -> None:
    settings = api.settings
    get = api.client.get

    response = await get(OVERVIEW)
    assert_problem(response, 401, "missing_token")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "error=" not in response.headers["www-authenticate"]  # RFC 6750: no error without a token

    assert_problem(
        await get(OVERVIEW, headers={"authorization": "Basic abc"}), 401, "invalid_authorization_header"
    )
    assert_problem(await get(OVERVIEW, headers=bearer("not-a-jwt")), 401, "malformed_token")

    expired = token(settings, LEARNER_A, expires_in=timedelta(minutes=-5))
    response = await get(OVERVIEW, headers=bearer(expired))
    assert_problem(response, 401, "token_expired")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]

    wrong_aud = token(settings, LEARNER_A, aud="someone-else")
    assert_problem(await get(OVERVIEW, headers=bearer(wrong_aud)), 401, "invalid_audience")
    wrong_iss = token(settings, LEARNER_A, iss="evil")
    assert_problem(await get(OVERVIEW, headers=bearer(wrong_iss)), 401, "invalid_issuer")
    bad_signature = token(settings, LEARNER_A, key="another-secret-0123456789abcdef0123")
    assert_problem(await get(OVERVIEW, headers=bearer(bad_signature)), 401, "invalid_signature")
    no_exp = jwt.encode(
        {"sub": LEARNER_A, "aud": settings.jwt_audience, "iss": settings.jwt_issuer},
        "test-jwt-secret-0123456789abcdef0123",
        algorithm="HS256",
    )
    assert_problem(await get(OVERVIEW, headers=bearer(no_exp)), 401, "missing_claim")
    unsigned = jwt.encode(
        {"sub": LEARNER_A, "aud": settings.jwt_audience, "iss": settings.jwt_issuer, "exp": 9999999999},
        None,
        algorithm="none",
    )
    assert_problem(await get(OVERVIEW, headers=bearer(unsigned)), 401, "unsupported_algorithm")
    not_yet = token(settings, LEARNER_A, nbf=9_999_999_999)
    assert_problem(await get(OVERVIEW, headers=bearer(not_yet)), 401, "token_not_yet_valid")

    # A good token passes; the same request without it did not.
    assert (await get(OVERVIEW, headers=api.auth(LEARNER_A))).status_code == 200


async def test_learner_cannot_read_another_learner_or_staff_views(api: Api) -> None:
    pseudonymizer = Pseudonymizer.from_settings(api.settings)
    a_hash = pseudonymizer.pseudonymize(LEARNER_A)
    b_hash = pseudonymizer.pseudonymize(LEARNER_B)
    as_a = api.auth(LEARNER_A)

    for path in (OVERVIEW, "/api/analytics/learning/heatmap", "/api/analytics/gamification/progress"):
        response = await api.client.get(path, params={"subject": b_hash}, headers=as_a)
        assert_problem(response, 403, "subject_forbidden")
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
        own = await api.client.get(path, params={"subject": a_hash}, headers=as_a)
        assert own.status_code == 200, own.text
        assert own.json()["subject"] == a_hash

    assert_problem(await api.client.get(SYSTEM, headers=as_a), 403, "staff_role_required")
    assert_problem(
        await api.client.get("/api/analytics/cohort/overview", headers=as_a), 403, "staff_role_required"
    )

    # Staff see system metrics and cohort aggregates, not another learner's individual rows.
    as_staff = api.auth(STAFF, roles=["staff"])
    assert (await api.client.get(SYSTEM, headers=as_staff)).status_code == 200
    assert (await api.client.get("/api/analytics/cohort/overview", headers=as_staff)).status_code == 200
    staff_read = await api.client.get(OVERVIEW, params={"subject": b_hash}, headers=as_staff)
    assert_problem(staff_read, 403, "subject_forbidden")

    # Refusals are audited too, with pseudonyms only.
    conn = await connect(api.settings)
    try:
        rows = await audit.entries(conn, subject=b_hash)
    finally:
        await conn.close()
    outcomes = sorted((r.actor_role, r.outcome, r.endpoint) for r in rows)
    assert ("learner", "denied", OVERVIEW) in outcomes
    assert ("staff", "denied", OVERVIEW) in outcomes
    assert all(r.actor_hash != LEARNER_A and r.subject_hash == b_hash for r in rows)


async def test_a_numeric_sub_is_a_user_id_and_other_types_are_refused_by_name(api: Api) -> None:
    """docs/api.md: sub is a non-empty string or a number (PyJWT >= 2.10 alone refuses numbers)."""
    numeric = await api.client.get(OVERVIEW, headers=api.auth(12345))
    assert numeric.status_code == 200, numeric.text
    assert numeric.json()["subject"] == Pseudonymizer.from_settings(api.settings).pseudonymize("12345")
    for sub in (True, 1.5, "", "  ", ["x"]):
        response = await api.client.get(OVERVIEW, headers=api.auth(sub))
        assert_problem(response, 401, "invalid_subject")


async def test_roles_split_on_plain_spaces_only(api: Api) -> None:
    """A newline or a no-break space inside a role claim does not make a second role."""
    for roles in ("reader\u00a0staff", "reader\nstaff", "reader\tstaff", ["staff\n"], ["reader staff"]):
        response = await api.client.get(SYSTEM, headers=api.auth(STAFF, roles=roles))
        assert_problem(response, 403, "staff_role_required")
    for roles in ("reader staff", "  staff  ", ["reader", "staff"]):
        response = await api.client.get(SYSTEM, headers=api.auth(STAFF, roles=roles))
        assert response.status_code == 200, (roles, response.text)


async def test_rs256_tokens_and_no_algorithm_confusion(migrated: Settings) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = migrated.with_overrides(jwt_secret=None, jwt_public_key=public_pem)
    async for api in open_api(settings):
        good = token(settings, LEARNER_A, key=private, algorithm="RS256")
        assert (await api.client.get(OVERVIEW, headers=bearer(good))).status_code == 200
        expired = token(
            settings, LEARNER_A, key=private, algorithm="RS256", expires_in=timedelta(seconds=-120)
        )
        assert_problem(await api.client.get(OVERVIEW, headers=bearer(expired)), 401, "token_expired")
        # The public key used as an HS256 secret must not verify (algorithm confusion).
        forged = token(settings, LEARNER_A)  # HS256 with the test secret, which is not configured now
        assert_problem(await api.client.get(OVERVIEW, headers=bearer(forged)), 401, "unsupported_algorithm")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        wrong_key = token(settings, LEARNER_A, key=other, algorithm="RS256")
        assert_problem(await api.client.get(OVERVIEW, headers=bearer(wrong_key)), 401, "invalid_signature")


async def test_pseudonyms_of_every_key_are_read(migrated: Settings) -> None:
    """After a key rotation the caller's rows under the old key id still count."""
    from tests.support.api import run_pipeline

    def produce(tracker, provider):  # type: ignore[no-untyped-def]
        tracker.xp_awarded(LEARNER_A, 7, "quiz")

    await run_pipeline(migrated, produce)  # written under key t1
    rotated = migrated.with_overrides(
        pseudonym_keys={"t2": "a-newer-key-0123456789abcdef", "t1": "test-key-0123456789abcdef"},
        pseudonym_key_id="t2",
    )
    async for api in open_api(rotated):
        response = await api.client.get(OVERVIEW, headers=api.auth(LEARNER_A))
        assert response.status_code == 200
        body = response.json()
        assert body["xp"] == 7
        assert body["subject"].startswith("t2:")
