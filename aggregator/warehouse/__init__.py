"""Warehouse export: raw events and rollups to Apache Iceberg tables and hive-partitioned Parquet.

``studyin-analytics export`` (:mod:`.runner`) reads what changed since its last step by a
commit-ordered watermark (:mod:`.watermark`) and writes each source (:mod:`.sources`) to an
Iceberg table (:mod:`.iceberg`) and to Parquet files (:mod:`.parquet`), each committing its
cursor atomically with the data it wrote. docs/export.md has the design and the guarantees.
"""
