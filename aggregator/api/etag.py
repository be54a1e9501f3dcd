"""Cacheable JSON reads: a strong ETag, ``304 Not Modified``, private caching per caller."""

from __future__ import annotations

import hashlib

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel


def cached_json(request: Request, model: BaseModel, *, max_age: int) -> Response:
    """The model as JSON with a strong ETag; ``304`` when the client already has it.

    Responses are per caller, so caches may keep them only privately (``Vary: Authorization``).
    """
    body = model.model_dump_json().encode()
    etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={max_age}",
        "Vary": "Authorization",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and (
        if_none_match.strip() == "*"
        or etag in [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    ):
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type="application/json", headers=headers)
