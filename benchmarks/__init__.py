"""Benchmarks of studyin-analytics (``studyin-analytics bench``)."""
