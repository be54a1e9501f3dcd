"""The commands' console output: data printed as text, never read as rich markup or emoji codes."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def new_console(*, stderr: bool = False) -> Console:
    """The commands' console: no emoji codes (``:bus:`` in a key name stays text)."""
    return Console(stderr=stderr, emoji=False)


def data(value: object) -> Text:
    """``value`` as plain text: neither rich markup nor emoji codes are read in data."""
    return Text(str(value))
