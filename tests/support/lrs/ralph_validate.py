"""Validates xAPI statements with Ralph's own models. Executed by the python of Ralph's virtualenv
(tests/support/lrs/ralph.py); never imported by the project.

Reads one JSON statement per line on stdin; writes one JSON report per line on stdout:
``{"errors": [...], "profile_models": [...], "profile_errors": [...]}``

* ``errors``: what ``ralph.models.xapi.base.statements.BaseXapiStatement`` (the xAPI 1.0.3 statement
  model) says, as ``{"loc": ..., "msg": ..., "type": ...}``;
* ``profile_models``: the profile models Ralph's own selector picks for the statement (video, LMS,
  virtual classroom...), as ``ralph validate`` would;
* ``profile_errors``: when the selector picked models and none accepts the statement, the last one's errors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import ValidationError
from ralph.exceptions import UnknownEventException
from ralph.models.selector import ModelSelector
from ralph.models.xapi.base.statements import BaseXapiStatement


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def report(statement: dict[str, Any], selector: ModelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {"errors": [], "profile_models": [], "profile_errors": []}
    try:
        BaseXapiStatement.model_validate(statement)
    except ValidationError as exc:
        out["errors"] = _errors(exc)
    try:
        models = selector.get_models(statement)
    except UnknownEventException:
        return out
    out["profile_models"] = [model.__name__ for model in models]
    for model in models:
        try:
            model.model_validate(statement)
        except ValidationError as exc:
            out["profile_errors"] = _errors(exc)
        else:
            out["profile_errors"] = []
            break
    return out


def main() -> None:
    selector = ModelSelector(module="ralph.models.xapi")
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(report(json.loads(line), selector)), flush=True)


if __name__ == "__main__":
    main()
