"""The analysis engine's compiled passes (C extensions built by ``setup.py``), or ``None``.

``pip install -e .`` compiles them when a C compiler is available; without one the install still
succeeds, a warning is logged once here, and the engine falls back to its numpy code (the same
answers, slower: long funnels and "any activity" retention). ``tests/aggregator/analysis/
test_kernel.py`` fails when they are missing, so CI never runs on the fallback alone.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

log = logging.getLogger(__name__)


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        log.warning(
            "the compiled %s is not built (no C compiler at install?): the analysis engine uses its "
            "slower numpy code; reinstall with gcc or cc available (docs/analytics.md)",
            name,
        )
        return None


FUNNEL = _load("_funnel_kernel")
"""funnel_kernel.c: ordered, strict and any-order funnels in one pass per learner."""
RETENTION = _load("_retention_kernel")
"""retention_kernel.c: the (learner, period) cells with activity."""
