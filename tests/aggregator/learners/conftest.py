"""The erasure tests use the warehouse export's fixture (a migrated schema, export paths, cleanup)."""

from tests.aggregator.warehouse.conftest import Warehouse, warehouse

__all__ = ["Warehouse", "warehouse"]
