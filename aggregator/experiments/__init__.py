"""A/B experiments on learners: statistics from exact per-variant sums (see docs/experiments.md)."""
