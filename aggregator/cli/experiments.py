"""``studyin-analytics experiments create|list|show|stop``: experiment definitions from the command line.

``create`` reads one definition (JSON, docs/experiments.md) from a file or ``-`` (stdin); while a version
of the key runs, ``--new-version`` is needed to change it (the running version is stopped). Every change
publishes the running experiments to the apps (the ``experiments`` snapshot on the bus's Redis).
Invalid definitions are refused naming each field (exit 2); output is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pydantic import ValidationError

from .exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from .settings import Settings, load_settings


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from ..experiments import store
    from ..experiments.definitions import ExperimentDefinition
    from ..storage.db import connect

    definition: ExperimentDefinition | None = None
    if args.action == "create":
        try:
            text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()  # noqa: SIM115, ASYNC230
        except (OSError, UnicodeDecodeError) as exc:  # not "cannot reach PostgreSQL": nothing was tried yet
            print(f"error: cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            definition = ExperimentDefinition.model_validate_json(text)
        except ValidationError as exc:
            for error in exc.errors(include_input=False, include_url=False):
                field = ".".join(str(p) for p in error["loc"]) or "<definition>"
                print(f"error: {field}: {error['msg']}", file=sys.stderr)
            return EXIT_USAGE
    conn = await connect(settings)
    try:
        if args.action == "list":
            _print([v.as_json() for v in await store.latest(conn)])
            return EXIT_OK
        if args.action == "show":
            versions = await store.history(conn, args.key)
            if not versions:
                print(f"error: key: no experiment {args.key!r}", file=sys.stderr)
                return EXIT_FAILURE
            _print([v.as_json() for v in versions])
            return EXIT_OK
        try:
            if definition is not None:
                changed = await store.create(conn, definition, args.by, new_version=args.new_version)
            else:
                changed = await store.stop(conn, args.key)
        except (store.ExperimentConflict, store.ExperimentNotFound) as exc:
            hint = ""
            if isinstance(exc, store.ExperimentConflict) and definition is not None:
                hint = " (--new-version stops it and starts the next version: a new randomisation)"
            print(f"error: {exc}{hint}", file=sys.stderr)
            return EXIT_FAILURE
        await store.publish(conn, settings)
        _print(changed.as_json())
        return EXIT_OK
    finally:
        await conn.close()


def cmd_experiments(args: argparse.Namespace) -> int:
    return asyncio.run(_run(load_settings(), args))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "experiments",
        help="define, list, show and stop A/B experiments (docs/experiments.md)",
        description=(
            "Experiment definitions (docs/experiments.md). create reads one definition (JSON) from a file or "
            "'-' (stdin); while a version of the key runs, --new-version is needed to change it (the running "
            "version is stopped). Every change publishes the running experiments to the apps (the "
            "'experiments' snapshot on the bus's Redis). Invalid definitions are refused naming each field "
            "(exit 2); output is JSON."
        ),
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="store a definition (JSON file, '-' for stdin) as a new version"
    )
    create.add_argument("file", help="the definition, JSON")
    create.add_argument(
        "--new-version", action="store_true", help="replace the running version (stops it; a new analysis)"
    )
    create.add_argument("--by", default="cli", help="who defines it, for the history (default 'cli')")
    actions.add_parser("list", help="the latest version of every experiment")
    show = actions.add_parser("show", help="every version of one experiment (its history)")
    show.add_argument("key", help="the experiment's key, e.g. coach-prompt")
    stop = actions.add_parser("stop", help="stop the running version (apps stop assigning it)")
    stop.add_argument("key", help="the experiment's key, e.g. coach-prompt")
    p.set_defaults(func=cmd_experiments)
