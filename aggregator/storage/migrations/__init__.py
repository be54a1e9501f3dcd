"""Alembic migrations of the analytics schema (run with ``studyin-analytics migrate``)."""
