"""``studyin-analytics learner export|erase``: a learner's access and erasure requests (docs/privacy.md)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from ...exporter.tombstone import REFRESH_S
from .exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from .settings import ConfigurationError, load_settings


def _user_id(args: argparse.Namespace) -> str:
    value = sys.stdin.readline().strip() if args.user_id == "-" else str(args.user_id)
    if not value:
        raise ConfigurationError("--user-id: empty")
    return value


def cmd_learner(args: argparse.Namespace) -> int:
    from ..learners import erasure
    from ..learners.identity import learner_of

    settings = load_settings()
    learner = learner_of(_user_id(args), settings)  # the raw id goes no further than this line
    if args.action == "export":
        out_dir = Path(args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "learner.jsonl").open("w", encoding="utf-8") as out:
            counts = asyncio.run(erasure.write_export(settings, learner, out))
        asyncio.run(erasure.audit_export(settings, learner, _actor(args), counts))
        (out_dir / "README.md").write_text(erasure.EXPORT_README, encoding="utf-8")
        print(json.dumps({"records": counts, "file": str(out_dir / "learner.jsonl")}, sort_keys=True))
        return EXIT_OK
    actor = _actor(args)
    report = asyncio.run(
        erasure.erase_learner(
            settings, learner, actor=actor, lock_wait_s=args.lock_wait, settle_s=args.settle, say=_say
        )
    )
    print(json.dumps({"clean": report.clean, **report.detail()}, sort_keys=True))
    if not report.clean:
        print("verification found the learner still held (see found_after / skipped)", file=sys.stderr)
        return EXIT_FAILURE
    print("verification: nothing found in any sink", file=sys.stderr)
    return EXIT_OK


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or f"operator:{getpass.getuser()}")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "learner",
        help="access export or erasure of one learner's data in every sink",
        description=(
            "Compute the learner's pseudonyms under every configured key (the raw id is never "
            "stored or logged), then `export` every row held about them (PostgreSQL, the bus, the "
            "Parquet and Iceberg exports, the LRS's statements) as JSON Lines with a README of the "
            "fields, or `erase` them everywhere: tombstone (late events never come back), PostgreSQL, "
            "warehouse exports, LRS statements voided, bus entries; a verification pass then searches "
            "every sink and an erasure receipt goes to the audit log. Runs as the erasure role "
            "(POSTGRES_ERASURE_ROLE). Idempotent and resumable: run it again after a failure. "
            "Exit 1 if the verification still finds the learner. See docs/privacy.md."
        ),
    )
    p.add_argument("action", choices=["export", "erase"], help="what to do")
    p.add_argument(
        "--user-id",
        required=True,
        help="the learner's id in the app; '-' reads it from stdin (keeps it "
        "out of the process list and shell history)",
    )
    p.add_argument(
        "--output", default="learner-export", help="export: folder written (default learner-export)"
    )
    p.add_argument("--actor", help="who asked, as the audit log keeps it (default operator:<login>)")
    p.add_argument(
        "--lock-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="erase: how long to wait for the warehouse exporter's lock (default 60)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=REFRESH_S + 0.5,
        metavar="SECONDS",
        help=f"erase: wait after the tombstone, before deleting, so every process has re-read it "
        f"(default {REFRESH_S + 0.5}; lower only when no writer or reader runs)",
    )
    p.set_defaults(func=cmd_learner)


__all__ = ["EXIT_USAGE", "register"]
