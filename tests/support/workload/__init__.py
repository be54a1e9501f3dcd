"""A known workload for the aggregator tests (build.py), its independent ground truth (truth.py) and the
comparison of the rollup tables with it (compare.py)."""

from .build import NS, Workload, bad_spans, build, event_span, push, with_spans
from .compare import mismatches
from .truth import Truth, truth_of

__all__ = [
    "NS",
    "Truth",
    "Workload",
    "bad_spans",
    "build",
    "event_span",
    "mismatches",
    "push",
    "truth_of",
    "with_spans",
]
