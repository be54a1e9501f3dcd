"""docs/api.md's examples against a running query API: its funnel request (the `curl` line a staff member
copies) is answered, and a body that is not JSON gets the answer the page describes."""

from __future__ import annotations

import re
import shlex
from collections.abc import AsyncIterator
from typing import Any

from studyin_analytics.aggregator.cli.settings import Settings
from tests.support import ROOT
from tests.support.api import STAFF, open_api

DOC = (ROOT / "docs" / "api.md").read_text()


def _funnel_curl() -> list[str]:
    (command,) = [b for b in re.findall(r"```sh\n(.*?)```", DOC, re.S) if "analysis/funnels" in b]
    return shlex.split(command.replace("\\\n", " "))


async def _staff_post(settings: Settings, path: str, body: str) -> AsyncIterator[tuple[int, Any]]:
    async for api in open_api(settings):
        headers = {**api.auth(STAFF, roles=["staff"]), "content-type": "application/json"}
        response = await api.client.post(path, content=body, headers=headers)
        yield response.status_code, response.json()


async def test_the_funnel_example_is_answered(migrated: Settings) -> None:
    words = _funnel_curl()
    url, body = next(w for w in words if w.startswith("http")), words[words.index("-d") + 1]
    path = "/" + url.split("/", 3)[3]
    async for status, answer in _staff_post(migrated, path, body):
        assert status == 200, answer
        assert answer["order"] == "ordered" and answer["min_group_size"] == migrated.min_cohort_size


async def test_a_body_that_is_not_json_is_422_json_invalid_at_its_offset(migrated: Settings) -> None:
    assert '`422` too, with one\nerror of type `json_invalid` at `loc: ["body", <character offset>]`' in DOC
    async for status, answer in _staff_post(migrated, "/api/analytics/analysis/funnels", '{"steps": oops}'):
        assert status == 422, answer
        (error,) = answer["errors"]
        assert error["type"] == "json_invalid" and error["loc"] == ["body", 10], error
