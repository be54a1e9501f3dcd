"""Learner routes (staff): access export and erasure of one learner, as ``learner export|erase``.

The learner's id travels in the JSON body (never in the URL, so no access log or proxy keeps
it); the API computes the pseudonyms in-process and forgets the id. Both routes are audited with
the learner named by its tombstone digest ``erased:<digest>`` (an audited export of an erased
learner must not put the pseudonym back; the erasure's receipt is the audit row it writes itself).
They connect to PostgreSQL as the erasure role (revision 0022_erasure_finish: read and delete the
per-learner tables, append to the audit log and replace an erased pseudonym in it, commit to the
Iceberg catalog), with ``erasure_postgres_url`` or else the API's own login, which must then be a
member of that role; the API process never needs the owner's login (docs/privacy.md).
"""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from . import audit
from .deps import PREFIX, AppSettings, Caller, Db, require_staff_audited
from .problems import ERROR_RESPONSES

EXPORT_PATH = f"{PREFIX}/learners/export"
ERASE_PATH = f"{PREFIX}/learners/erase"

router = APIRouter()


class LearnerRequest(BaseModel):
    user_id: str = Field(
        min_length=1, max_length=256, description="The learner's id in the app (never stored)"
    )


class ErasureResult(BaseModel):
    clean: bool = Field(description="The verification pass found the learner in no sink")
    erased: dict[str, dict[str, int]]
    found_after: dict[str, dict[str, int]]
    skipped: dict[str, str]
    seconds: float


@router.post(
    EXPORT_PATH,
    responses={**ERROR_RESPONSES, 200: {"content": {"application/x-ndjson": {}}}},
    tags=["staff"],
    response_class=Response,
)
async def export_learner(body: LearnerRequest, caller: Caller, db: Db, settings: AppSettings) -> Response:
    """Every record held about one learner in every sink, as JSON Lines (docs/privacy.md). Staff only."""
    from ..learners import erasure
    from ..learners.identity import learner_of

    await require_staff_audited(db, caller, EXPORT_PATH, "user")
    learner = learner_of(body.user_id, settings)
    # Named by its digest, not its pseudonym: an export of an erased learner must not bring it back.
    await audit.record(db, caller, EXPORT_PATH, subject=learner.reference, scope="user")
    out = io.StringIO()
    await erasure.write_export(settings, learner, out)
    return Response(out.getvalue(), media_type="application/x-ndjson")


@router.post(ERASE_PATH, response_model=ErasureResult, responses=ERROR_RESPONSES, tags=["staff"])
async def erase_learner(
    body: LearnerRequest, caller: Caller, db: Db, settings: AppSettings
) -> dict[str, Any]:
    """Erase one learner everywhere, verify, keep the receipt in the audit log. Staff only; idempotent."""
    from ..learners import erasure
    from ..learners.identity import learner_of

    await require_staff_audited(db, caller, ERASE_PATH, "user")
    learner = learner_of(body.user_id, settings)
    report = await erasure.erase_learner(settings, learner, actor=caller.user_hash, lock_wait_s=5.0)
    return {"clean": report.clean, **report.detail()}
