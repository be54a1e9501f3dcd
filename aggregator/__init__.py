"""Aggregator service of studyin-analytics: bus -> PostgreSQL rollups, and the query API."""

from .consumer.service import Aggregator, BatchResult

__all__ = ["Aggregator", "BatchResult"]
