"""A feature stage's inputs: the rows a chunk is computed from, and batches prepared ahead.

The first input drives (its rows are the work); small columns of the other inputs are joined in by
image_id. Each input's status columns are prefixed with its name (`caption.status`,
`caption.error_kind`, ...) so a row that failed upstream becomes this stage's error row, carrying
the upstream kind and stage, without reaching the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from pipeline.engine.schemas import ERROR_COLUMNS, STATUS_ERROR, STATUS_OK
from pipeline.engine.store import PartDir, part_name

STATUS_COLUMNS = ("status", *ERROR_COLUMNS)


def chunks(
    dirs: dict[str, PartDir],
    driver: str,
    driver_columns: tuple[str, ...],
    lookup_columns: dict[str, tuple[str, ...]],
    todo: set[str],
    chunk_size: int,
) -> Iterator[tuple[str, pa.Table]]:
    """(part name, driver rows of `todo` with the lookup columns of the other inputs joined in).

    Args:
        dirs: each input's folder, by input name.
        driver: the input whose rows are the work.
    """
    lookups = {
        name: dirs[name].read(["image_id", *STATUS_COLUMNS, *cols], ids=todo) for name, cols in lookup_columns.items()
    }
    for chunk in dirs[driver].iter_rows(["image_id", *STATUS_COLUMNS, *driver_columns], todo, chunk_size):
        yield part_name(chunk.column("image_id").to_pylist()), _join(_prefix_status(chunk, driver), lookups)


def _join(chunk: pa.Table, lookups: dict[str, pa.Table]) -> pa.Table:
    """Join the lookups by image_id (inner), by index: Arrow's hash join refuses list columns (`objects`)."""
    for name, table in lookups.items():
        index = {k: i for i, k in enumerate(table.column("image_id").to_pylist())}
        rows = [index.get(k) for k in chunk.column("image_id").to_pylist()]
        present = [i for i, r in enumerate(rows) if r is not None]
        chunk = chunk.take(pa.array(present, pa.int64()))
        looked_up = _prefix_status(table.drop_columns(["image_id"]), name).take(
            pa.array([rows[i] for i in present], pa.int64())
        )
        for field_, column in zip(looked_up.schema, looked_up.columns, strict=True):
            chunk = chunk.append_column(field_, column)
    return chunk


def _prefix_status(table: pa.Table, name: str) -> pa.Table:
    return table.rename_columns([f"{name}.{c}" if c in STATUS_COLUMNS else c for c in table.column_names])


def split_upstream_errors(chunk: pa.Table, producers: dict[str, str]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The rows every input has ok, and an error row for each other row.

    Args:
        producers: input name -> the stage that writes it (where an error with no stage arose).
    """
    status = [c[: -len(".status")] for c in chunk.column_names if c.endswith(".status")]
    wanted = ["image_id", *(f"{n}.{c}" for n in status for c in STATUS_COLUMNS if f"{n}.{c}" in chunk.column_names)]
    good, failed = [], []
    for i, row in enumerate(chunk.select(wanted).to_pylist()):
        error = next((_upstream_row(row, n, producers[n]) for n in status if row[f"{n}.status"] != STATUS_OK), None)
        if error is None:
            good.append(i)
        else:
            failed.append(error)
    return chunk.take(pa.array(good, pa.int64())), failed


def _upstream_row(row: dict[str, Any], name: str, producer: str) -> dict[str, Any]:
    """This stage's row for an image whose `name` row is an error: the same kind and stage of origin;
    the message names the stage once (a message from further up already does)."""
    stage = row.get(f"{name}.error_stage") or producer
    message = row.get(f"{name}.error") or "unknown error"
    return {
        "image_id": row["image_id"],
        "status": STATUS_ERROR,
        "error": f"{stage}: {message}" if stage == producer else message,
        "error_kind": row.get(f"{name}.error_kind") or "unknown",
        "error_stage": stage,
    }


def prefetched(
    batches: list[pa.Table], prepare: Callable[[pa.Table], list[Any] | None], ahead: bool
) -> Iterator[tuple[pa.Table, list[Any] | None]]:
    """Each batch with its `prepare` result; with `ahead`, the next one is prepared in a thread while
    the caller works on this one, else in line."""
    if not ahead:
        for batch in batches:
            yield batch, prepare(batch)
        return
    with ThreadPoolExecutor(1) as loader:
        pending = loader.submit(prepare, batches[0]) if batches else None
        for k, batch in enumerate(batches):
            prepared = pending.result()
            if k + 1 < len(batches):
                pending = loader.submit(prepare, batches[k + 1])
            yield batch, prepared
