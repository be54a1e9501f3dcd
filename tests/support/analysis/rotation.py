"""A workload under a key rotation: each learner's later events under its ``k2`` pseudonym, linked."""

from __future__ import annotations

import random

from .reference import Event


def new_name(user: str) -> str:
    return "k2:" + user.partition(":")[2]


def rotated(events: list[Event], seed: int) -> tuple[list[Event], dict[str, str]]:
    """Each learner's events from a random one of them on under its ``k2`` pseudonym; the links."""
    rng = random.Random(seed)
    by_user: dict[str, list[Event]] = {}
    for e in sorted(events, key=lambda e: (e.time_us, e.tie)):
        by_user.setdefault(e.user_hash, []).append(e)
    out: list[Event] = []
    links: dict[str, str] = {}
    for user, seq in by_user.items():
        cut = rng.randrange(len(seq) + 1)  # 0: only the new key; len: never rotated
        for i, e in enumerate(seq):
            name = new_name(user) if i >= cut else user
            out.append(Event(name, e.time_us, e.event_type, e.event_id, e.props))
        if cut < len(seq):
            links[new_name(user)] = user
    return out, links
