"""docs/instrumentation.md carries the event catalogue generated from events.py."""

from __future__ import annotations

from studyin_analytics.instrumentation import events
from tests.support import ROOT

DOC = ROOT / "docs" / "instrumentation.md"


def test_catalogue_in_docs_is_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    start, end = "<!-- catalogue:start -->\n", "<!-- catalogue:end -->"
    section = text[text.index(start) + len(start) : text.index(end)]
    assert section == events.catalogue_markdown(), (
        "regenerate the catalogue section from events.catalogue_markdown()"
    )
    for event_type in events.EVENT_TYPES:
        assert f"`studyin.{event_type}`" in section
