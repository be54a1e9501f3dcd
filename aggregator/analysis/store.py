"""The event-sequence store: every learner's learning events, sorted, in numpy columns.

One row per stored learning event (API requests never enter), sorted by (learner, time, tie)
where ``tie`` is the first 8 bytes of the event id read as a signed integer: events at the
same microsecond are ordered by their (random-looking, but fixed) ids, so the order never
depends on arrival. Learners are dictionary codes of ``user_hash``; filter properties are
dictionary codes (``-1``: absent). ``offsets[l]:offsets[l + 1]`` are learner ``l``'s rows.

:meth:`EventStore.merge` adds a batch of new rows (a refresh, ``loader.py``): rows of learners
the batch does not touch keep their order, the touched learners are re-sorted, and one stable
merge by learner (two sorted runs: linear) rebuilds the columns. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .definitions import FILTER_PROPERTIES, EventMatcher
from .identities import roots

NEVER = np.iinfo(np.int64).max
"""A first activity not known (no row, no ``analysis_learners`` row)."""
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
F64 = npt.NDArray[np.float64]
PROPERTIES: tuple[str, ...] = (*FILTER_PROPERTIES, "session_id")
"""Dictionary-encoded columns: the filter properties and the session (study minutes count each once)."""


@dataclass
class Coded:
    """A text column as a local dictionary: ``values[codes[i]]`` is row i's text (code -1: none)."""

    values: list[str | None]
    codes: I32

    @classmethod
    def of(cls, texts: list[str | None]) -> Coded:
        index: dict[str | None, int] = {}
        codes = np.fromiter((index.setdefault(t, len(index)) for t in texts), np.int32, len(texts))
        values = list(index)
        if None in index:
            codes[codes == index[None]] = -1
        return cls(values, codes)

    def __len__(self) -> int:
        return len(self.codes)


@dataclass
class EventBatch:
    """New rows, column by column (any order; the store sorts)."""

    user: Coded
    time_us: I64
    event_type: Coded
    tie: I64
    props: dict[str, Coded]
    xp: F64
    duration_s: F64

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def of_rows(cls, rows: list[dict[str, Any]]) -> EventBatch:
        """From dicts with ``user_hash, time_us, event_type, tie`` and the property names (tests)."""
        return cls(
            user=Coded.of([r["user_hash"] or None for r in rows]),
            time_us=np.fromiter((r["time_us"] for r in rows), np.int64, len(rows)),
            event_type=Coded.of([r["event_type"] for r in rows]),
            tie=np.fromiter((r["tie"] for r in rows), np.int64, len(rows)),
            props={p: Coded.of([_text(r.get(p)) for r in rows]) for p in PROPERTIES},
            xp=np.fromiter((_number(r.get("xp_amount")) for r in rows), np.float64, len(rows)),
            duration_s=np.fromiter((_number(r.get("duration_s")) for r in rows), np.float64, len(rows)),
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if np.isfinite(number) else 0.0


class Dictionary:
    """Text <-> dense int codes, growing only."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.codes: dict[str, int] = {}

    def encode(self, values: list[str | None]) -> I32:
        codes, values_list, out = self.codes, self.values, np.empty(len(values), dtype=np.int32)
        for i, value in enumerate(values):
            if value is None:
                out[i] = -1
                continue
            code = codes.get(value)
            if code is None:
                code = codes[value] = len(values_list)
                values_list.append(value)
            out[i] = code
        return out

    def encode_coded(self, column: Coded) -> I32:
        """Codes of a locally coded column (its dictionary encoded once, then gathered)."""
        local = self.encode(column.values)
        return np.where(
            column.codes >= 0, local[np.maximum(column.codes, 0)] if len(local) else -1, -1
        ).astype(np.int32)

    def lookup(self, values: tuple[str, ...]) -> I32:
        return np.array([self.codes[v] for v in values if v in self.codes], dtype=np.int32)


def _empty_columns() -> dict[str, npt.NDArray[Any]]:
    columns: dict[str, npt.NDArray[Any]] = {
        "learner": np.empty(0, np.int32),
        "time": np.empty(0, np.int64),
        "tie": np.empty(0, np.int64),
        "etype": np.empty(0, np.int16),
        "xp": np.empty(0, np.float32),
        "duration_s": np.empty(0, np.float32),
    }
    for p in PROPERTIES:
        columns[p] = np.empty(0, np.int32)
    return columns


@dataclass
class EventStore:
    learners: Dictionary = field(default_factory=Dictionary)
    types: Dictionary = field(default_factory=Dictionary)
    props: dict[str, Dictionary] = field(default_factory=lambda: {p: Dictionary() for p in PROPERTIES})
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=_empty_columns)
    offsets: I64 = field(default_factory=lambda: np.zeros(1, np.int64))
    canonical: I32 = field(default_factory=lambda: np.empty(0, np.int32))
    """Per learner code: the code its rows are kept under (the root of its key-rotation chain,
    ``identities.py``); itself unless a newer pseudonym of a learner who had an older one."""
    first_seen: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    """Per learner code: its first learning event ever (``analysis_learners``, outliving raw
    retention), or ``NEVER`` when not known."""
    _by_type: tuple[I64, I64] | None = None

    def __len__(self) -> int:
        return len(self.columns["time"])

    @property
    def learner(self) -> I32:
        return self.columns["learner"]

    @property
    def time(self) -> I64:
        return self.columns["time"]

    @property
    def learner_count(self) -> int:
        return len(self.offsets) - 1

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values()) + self.offsets.nbytes

    def merge(self, batch: EventBatch) -> None:
        """Add ``batch``'s rows (API requests and rows without a learner are left out)."""
        not_learning = [
            i for i, t in enumerate(batch.event_type.values) if t in ("api_request", "system_metric")
        ]
        types = batch.event_type.codes
        keep_mask = (batch.user.codes >= 0) & (types >= 0) & ~np.isin(types, not_learning)
        if not keep_mask.any():
            return
        idx = np.flatnonzero(keep_mask)
        codes = self.learners.encode_coded(batch.user)
        self._grow()
        new: dict[str, npt.NDArray[Any]] = {
            "learner": self.canonical[np.maximum(codes[idx], 0)],
            "time": batch.time_us[idx].astype(np.int64),
            "tie": batch.tie[idx].astype(np.int64),
            "etype": self.types.encode_coded(batch.event_type)[idx].astype(np.int16),
            "xp": batch.xp[idx].astype(np.float32),
            "duration_s": batch.duration_s[idx].astype(np.float32),
        }
        for p in PROPERTIES:
            new[p] = self.props[p].encode_coded(batch.props[p])[idx]
        self._resort(np.unique(new["learner"]), new)

    def _resort(self, touched: I32, new: dict[str, npt.NDArray[Any]] | None = None) -> None:
        """Re-sort the rows of the ``touched`` learners (with ``new`` rows), the others kept in order."""
        old = self.columns
        moved = np.isin(old["learner"], touched) if len(old["learner"]) else np.zeros(0, bool)
        stay = ~moved
        resorted = {
            name: np.concatenate([old[name][moved], new[name]]) if new else old[name][moved] for name in old
        }
        order = np.lexsort((resorted["tie"], resorted["time"], resorted["learner"]))
        combined = {name: np.concatenate([old[name][stay], resorted[name][order]]) for name in old}
        # Two runs each sorted by learner: the stable sort merges them in linear time.
        final = np.argsort(combined["learner"], kind="stable")
        self.columns = {name: column[final] for name, column in combined.items()}
        self._reindex()

    def _reindex(self) -> None:
        counts = np.bincount(self.columns["learner"], minlength=len(self.learners.values))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._by_type = None

    def _grow(self) -> None:
        """Give learner codes added to the dictionary their own code and no first activity yet."""
        n, have = len(self.learners.values), len(self.canonical)
        if n > have:
            self.canonical = np.concatenate([self.canonical, np.arange(have, n, dtype=np.int32)])
            self.first_seen = np.concatenate([self.first_seen, np.full(n - have, NEVER, np.int64)])

    def set_learners(self, users: list[str], first_us: I64, previous: list[str | None]) -> None:
        """Record learners' first activity and links (rows of ``analysis_learners``); rows of a learner
        whose pseudonyms became linked move to the chain's root."""
        codes = self.learners.encode(list(users))
        links = self.learners.encode(list(previous))
        self._grow()
        self.first_seen[codes] = first_us
        known = np.full(len(self.canonical), -1, np.int32)
        linked = np.flatnonzero(self.canonical != np.arange(len(self.canonical)))
        known[linked] = self.canonical[linked]  # links seen before stay (their rows moved already)
        known[codes[links >= 0]] = links[links >= 0]
        fresh = roots(known)
        changed = np.flatnonzero(fresh != self.canonical)
        self.canonical = fresh
        if len(changed) and len(self):
            learner = self.columns["learner"]
            touched = np.isin(learner, changed)
            if touched.any():
                self.columns["learner"] = np.where(touched, fresh[learner], learner).astype(np.int32)
                self._resort(np.unique(fresh[changed]))
        self._reindex()

    def drop_before(self, time_us: int) -> int:
        """Forget rows older than ``time_us`` (raw retention dropped their partitions); rows removed."""
        return self._keep(self.columns["time"] >= time_us)

    def drop_learners(self, codes: set[int]) -> int:
        """Forget every row and the first activity of the learners coded ``codes`` (erased learners),
        with every pseudonym linked to them; rows removed."""
        self._grow()
        wanted = self.canonical[np.fromiter(codes, np.int32, len(codes))]
        gone = np.isin(self.canonical, wanted)
        self.first_seen[gone] = NEVER
        return self._keep(~np.isin(self.columns["learner"], wanted))

    def _keep(self, keep: np.ndarray) -> int:
        """Keep the rows where ``keep`` is true (the order stays sorted); rows removed."""
        removed = int(len(keep) - keep.sum())
        if removed:
            self.columns = {name: column[keep] for name, column in self.columns.items()}
            self._reindex()
        return removed

    def _type_index(self) -> tuple[I64, I64]:
        if self._by_type is None:
            etype = self.columns["etype"]
            order = np.argsort(etype, kind="stable").astype(np.int64)
            counts = np.bincount(etype, minlength=len(self.types.values)) if len(etype) else np.zeros(0)
            self._by_type = (order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        return self._by_type

    def positions(self, matcher: EventMatcher) -> I64:
        """Sorted row positions of the events ``matcher`` selects."""
        code = self.types.codes.get(matcher.event)
        if code is None:
            return np.empty(0, np.int64)
        order, bounds = self._type_index()
        pos = order[bounds[code] : bounds[code + 1]]
        for f in matcher.filters:
            pos = pos[np.isin(self.columns[f.property][pos], self.props[f.property].lookup(f.values))]
        return pos

    def first_time(self) -> I64:
        """Each learner's first activity: its first row, or its first learning event ever when
        ``analysis_learners`` knows an earlier one, over all its pseudonyms (``NEVER``: none, or a
        pseudonym whose learner is kept under another code)."""
        self._grow()
        empty = self.offsets[:-1] == self.offsets[1:]
        first = (
            self.time[np.minimum(self.offsets[:-1], max(len(self) - 1, 0))]
            if len(self)
            else (np.zeros(self.learner_count, np.int64))
        )
        first = np.where(empty, NEVER, first)
        np.minimum.at(first, self.canonical, self.first_seen)
        first[self.canonical != np.arange(len(self.canonical))] = NEVER
        return first
