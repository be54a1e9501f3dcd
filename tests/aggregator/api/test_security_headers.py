"""Browser-side defences: /dashboard handles bearer tokens, so it says how a browser must treat it.

The Chromium test (tests/dashboard) shows the page still works under this policy and that the
browser enforces it.
"""

from __future__ import annotations

from tests.support.api import LEARNER_A, Api

COMMON = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def _directives(policy: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for directive in policy.split(";"):
        name, *values = directive.split()
        out[name] = set(values)
    return out


async def test_the_dashboard_and_its_files_forbid_framing_sniffing_referrers_and_foreign_scripts(
    api: Api,
) -> None:
    for path in ("/dashboard", "/dashboard/static/dashboard.js", "/dashboard/static/vendor/uPlot.min.css"):
        response = await api.client.get(path)
        assert response.status_code == 200, path
        for name, value in COMMON.items():
            assert response.headers[name] == value, (path, name)
        csp = _directives(response.headers["content-security-policy"])
        assert csp["default-src"] == {"'none'"}
        assert csp["script-src"] == {"'self'"}  # no 'unsafe-inline', no 'unsafe-eval', no host
        assert csp["style-src"] == {"'self'"}
        assert csp["connect-src"] == {"'self'"}
        assert csp["frame-ancestors"] == {"'none'"}
        assert csp["base-uri"] == csp["form-action"] == {"'none'"}


async def test_api_responses_load_nothing_and_are_never_framed(api: Api) -> None:
    for path, headers in (
        ("/api/analytics/learning/overview", api.auth(LEARNER_A)),
        ("/api/analytics/learning/overview", {}),  # a 401 problem too
        ("/healthz", {}),
        ("/openapi.json", {}),
    ):
        response = await api.client.get(path, headers=headers)
        for name, value in COMMON.items():
            assert response.headers[name] == value, (path, name)
        assert _directives(response.headers["content-security-policy"]) == {
            "default-src": {"'none'"},
            "frame-ancestors": {"'none'"},
        }
    docs = await api.client.get("/docs")  # its UI comes from a CDN: framing refused, the rest its own
    assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"
