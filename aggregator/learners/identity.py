"""A learner's pseudonyms under every configured key, computed in this process from the raw id.

The raw id lives only in the caller's frame: :class:`Learner` keeps the pseudonyms, never the id,
and nothing here logs or stores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...exporter.tombstone import digest
from ...instrumentation.privacy import Pseudonymizer
from ...instrumentation.settings import PseudonymKeySettings


@dataclass(frozen=True)
class Learner:
    """``user.hash`` under every key (active first) and ``user.lrs_hash`` under every LRS key."""

    user_hashes: tuple[str, ...]
    lrs_hashes: tuple[str, ...] = ()

    @property
    def pseudonyms(self) -> tuple[str, ...]:
        return self.user_hashes + self.lrs_hashes

    @property
    def reference(self) -> str:
        """What the audit log and the receipt name the learner by: ``erased:<digest>`` (no pseudonym)."""
        return f"erased:{digest(self.user_hashes[0])}"


def learner_of(user_id: str, settings: PseudonymKeySettings) -> Learner:
    """The pseudonyms of ``user_id`` (raises ``ConfigurationError`` without pseudonym keys)."""
    pseudonymizer = Pseudonymizer.from_settings(settings)
    lrs = pseudonymizer.lrs.pseudonyms(user_id) if pseudonymizer.lrs is not None else []
    return Learner(tuple(pseudonymizer.pseudonyms(user_id)), tuple(lrs))
