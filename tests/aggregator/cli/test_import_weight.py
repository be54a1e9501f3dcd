"""The command line and the aggregator load no analysis or warehouse libraries they do not use.

The aggregator's memory target (flat under 200 MB, docs/benchmarks.md) left ~115 MB of headroom
over an idle process of ~85 MB; pyarrow, pandas and numpy imported at parser build time took ~100
MB of it (measured: 188 MB RSS after ``build_parser()`` with the warehouse writers imported eagerly).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("pyarrow", "pandas", "numpy", "scipy", "pyiceberg", "duckdb", "adbc_driver_manager")

PROBE = f"""
import sys
from studyin_analytics.aggregator.cli.main import build_parser
from studyin_analytics.aggregator import Aggregator
build_parser()
print(sorted({{name.split('.')[0] for name in sys.modules}} & set({HEAVY!r})))
"""


def test_the_cli_and_the_aggregator_import_no_heavy_library() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
