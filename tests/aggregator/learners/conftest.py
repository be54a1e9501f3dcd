"""The erasure tests use the warehouse export's fixture (a migrated schema, export paths, cleanup) and
the LRS tests' Ralph server (one per test session, its venv cached)."""

from tests.aggregator.lrs.conftest import ralph, ralph_python
from tests.aggregator.warehouse.conftest import Warehouse, warehouse

__all__ = ["Warehouse", "ralph", "ralph_python", "warehouse"]
