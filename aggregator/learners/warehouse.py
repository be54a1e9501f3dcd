"""A learner in the warehouse exports: Parquet files rewritten, Iceberg rows deleted and their
old files removed.

Both run under the exporter's advisory lock (no export step is in flight meanwhile) and after the
PostgreSQL rows are gone, so no later export step brings the learner back.

- **Parquet**: every committed file that holds a row naming the learner (any text column: the
  pseudonym in ``user_hash``, the LRS pseudonym inside ``properties``) is rewritten without those
  rows into a temporary file that replaces it atomically (``os.replace``); a file left with no
  rows is deleted. Killed midway, a file is either old or new: running again finishes the rest.
  The step manifests keep their original row counts (a manifest records a commit, not the
  present contents).
- **Iceberg**: one row delete per table (copy-on-write: the data files holding the learner are
  rewritten), then every snapshot but the current one is expired, and the files no remaining
  snapshot reaches (old data files, their manifests and manifest lists, older metadata files) are
  deleted, so time travel cannot reach the learner either. The file removal needs a local
  warehouse; on object stores it is reported as left to the engine's orphan-file removal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..warehouse.iceberg import open_catalog
from ..warehouse.parquet import STAGING
from ..warehouse.sources import SOURCES, Source
from .identity import Learner


def _mask(table: pa.Table, learner: Learner) -> pa.ChunkedArray | None:
    """True for rows that name ``learner`` in any text column (``None``: no text column)."""
    mask: Any = None
    for name in table.column_names:
        column = table.column(name)
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            continue
        for pseudonym in learner.pseudonyms:
            hit = pc.fill_null(pc.match_substring(column, pseudonym), False)
            mask = hit if mask is None else pc.or_(mask, hit)
    return mask


def parquet_files(root: Path) -> Iterator[Path]:
    """Committed Parquet files under ``root`` (staged steps are never read)."""
    if root.is_dir():
        for path in sorted(root.rglob("*.parquet")):
            if STAGING not in path.relative_to(root).parts:
                yield path


def parquet_rows(root: Path, learner: Learner) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file relative to ``root``, row) for every row naming ``learner``."""
    for path in parquet_files(root):
        table = pq.read_table(path)
        mask = _mask(table, learner)
        if mask is not None and pc.any(mask).as_py():
            for row in table.filter(mask).to_pylist():
                yield str(path.relative_to(root)), row


def erase_parquet(root: Path, learner: Learner) -> dict[str, int]:
    """Rewrite the files naming ``learner`` without those rows; returns rows removed per file."""
    out: dict[str, int] = {}
    for path in parquet_files(root):
        table = pq.read_table(path)
        mask = _mask(table, learner)
        if mask is None or not pc.any(mask).as_py():
            continue
        kept = table.filter(pc.invert(mask))
        out[str(path.relative_to(root))] = table.num_rows - kept.num_rows
        if kept.num_rows == 0:
            path.unlink()
            continue
        tmp = path.with_name(path.name + ".erasing")
        pq.write_table(kept, tmp)
        os.replace(tmp, path)
    for tmp in root.rglob("*.erasing") if root.is_dir() else []:
        tmp.unlink()  # left by a run killed before its replace
    return out


def _per_user() -> list[Source]:
    return [s for s in SOURCES if s.per_user]


def iceberg_rows(catalog: Any, namespace: str, learner: Learner) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table, row) for every row of the current snapshots naming ``learner``."""
    for source in _per_user():
        table = _load(catalog, f"{namespace}.{source.table}")
        if table is None or table.current_snapshot() is None:
            continue
        data = table.scan().to_arrow()
        mask = _mask(data, learner)
        if mask is not None and pc.any(mask).as_py():
            for row in data.filter(mask).to_pylist():
                yield source.table, row


def iceberg_bounds(catalog: Any, namespace: str, learner: Learner) -> dict[str, int]:
    """Manifest entries of any snapshot (deleted ones too) whose column bounds start like a pseudonym
    (Iceberg truncates string bounds to 16 characters), per table."""
    prefixes = [p.encode()[:16] for p in learner.pseudonyms]
    out: dict[str, int] = {}
    for source in _per_user():
        table = _load(catalog, f"{namespace}.{source.table}")
        for snapshot in [] if table is None else table.snapshots():
            for manifest in snapshot.manifests(table.io):
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                    data = entry.data_file
                    bounds = [*(data.lower_bounds or {}).values(), *(data.upper_bounds or {}).values()]
                    if any(p in b for b in bounds for p in prefixes):
                        out[source.table] = out.get(source.table, 0) + 1
    return out


def _load(catalog: Any, identifier: str) -> Any:
    try:
        return catalog.load_table(identifier)
    except Exception:  # no such table (nothing exported yet) or no catalog tables at all
        return None


def erase_iceberg(catalog: Any, namespace: str, learner: Learner) -> dict[str, int]:
    """Delete ``learner``'s rows from every per-learner table, expire the older snapshots and
    remove the files they alone reached; returns rows deleted (and files removed) per table."""
    from pyiceberg import expressions

    member_of: Any = expressions.In  # a pydantic model: mypy's view of its constructor is off

    out: dict[str, int] = {}
    for source in _per_user():
        table = _load(catalog, f"{namespace}.{source.table}")
        if table is None or table.current_snapshot() is None:
            continue
        before = _rows(table)
        table.delete(delete_filter=member_of("user_hash", set(learner.user_hashes)))
        table = catalog.load_table(f"{namespace}.{source.table}")
        out[source.table] = before - _rows(table)
        # The delete's snapshot keeps a manifest of DELETED entries: the removed files' paths and
        # column bounds (a 16-character prefix of the pseudonym). An empty fast append starts a
        # snapshot that carries only the manifests of live files; the expiry below drops the rest.
        with table.transaction() as transaction, transaction.update_snapshot().fast_append():
            pass
        table = catalog.load_table(f"{namespace}.{source.table}")
        current = table.current_snapshot().snapshot_id
        old = [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current]
        if old:
            table.maintenance.expire_snapshots().by_ids(old).commit()
            table = catalog.load_table(f"{namespace}.{source.table}")
        out[f"{source.table} files removed"] = remove_unreachable(table)
    return out


def _rows(table: Any) -> int:
    snapshot = table.current_snapshot()
    return 0 if snapshot is None else int(snapshot.summary.additional_properties.get("total-records", 0))


def reachable(table: Any) -> set[str]:
    """Every file the table's remaining snapshots reach, as local paths."""
    io = table.io
    paths = {table.metadata_location}
    for snapshot in table.snapshots():
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            paths.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                paths.add(entry.data_file.file_path)
    return {_local(p) for p in paths}


def _local(location: str) -> str:
    parts = urlsplit(location)
    return parts.path if parts.scheme in ("file", "") else location


def remove_unreachable(table: Any) -> int:
    """Delete the files under the table's location that no remaining snapshot reaches (local only)."""
    location = table.location()
    if urlsplit(location).scheme not in ("file", ""):
        return -1  # object store: left to the engine's orphan-file removal (docs/privacy.md)
    keep = reachable(table)
    removed = 0
    for path in Path(_local(location)).rglob("*"):
        if path.is_file() and str(path) not in keep:
            path.unlink()
            removed += 1
    return removed


def catalog_of(settings: Any, export: Any) -> Any:
    """The export's Iceberg catalog (never created here), as the erasure role: revision
    0022_erasure_finish grants it the catalog's tables, so no exporter or owner login is needed."""
    from ..storage.db import service_url
    from ..warehouse.settings import catalog_schema, with_options

    url = export.catalog_uri
    if not url:
        url = with_options(
            service_url(settings, "erasure"), settings.postgres_erasure_role, catalog_schema(settings, export)
        )
        scheme, rest = url.split("://", 1)
        url = f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") else url
    return open_catalog(export.catalog_name, url, export.warehouse, create=False)
