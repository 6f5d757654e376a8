"""Running a model on one batch with isolation: a batch that raises is split in halves until the
failing rows are found (they get error rows), so one bad image never costs its neighbours' rows.

An out-of-memory batch is split the same way (after freeing the GPU cache), so a batch size too
large for one image mix degrades to smaller batches instead of failing. When every row of a large
batch fails, the cause is the model or the code, not the input: the run stops (SystemicError).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine.schemas import STATUS_ERROR

log = logging.getLogger(__name__)

Process = Callable[[pa.Table, "list[Any] | None"], pa.Table]
FailedRow = Callable[[str, Exception], pa.Table]


class SystemicError(RuntimeError):
    """Every row of a batch failed the same way: a model or code problem, not bad input. Stops the run."""


def run_isolated(
    process: Process, batch: pa.Table, prepared: list[Any] | None, failed_row: FailedRow, name: str
) -> pa.Table:
    """`process(batch, prepared)`, one output row per input row; rows that make it raise get
    `failed_row(image_id, exception)`.

    Args:
        process: the stage's batch function (returns a table of as many rows as the batch).
        prepared: per-row inputs prepared ahead (split alongside the batch), or None.
        failed_row: the error row of one image the process raised on.
        name: the stage, for messages.
    """
    try:
        table = process(batch, prepared)
    except Exception as e:
        if batch.num_rows == 1:
            free_gpu_memory(e)
            log.debug("%s failed on %s", name, batch.column("image_id")[0], exc_info=True)
            return failed_row(batch.column("image_id")[0].as_py(), e)
        # The traceback holds the failed call's frames and so its tensors: drop them before the
        # halves run, or an out-of-memory batch's activations stay allocated beside its halves.
        traceback.clear_frames(e.__traceback__)
        failure = e
    else:
        if table.num_rows != batch.num_rows:
            raise SystemicError(f"{name}.process returned {table.num_rows} rows for {batch.num_rows}")
        return table
    free_gpu_memory(failure)
    mid = batch.num_rows // 2
    first, second = (None, None) if prepared is None else (prepared[:mid], prepared[mid:])
    merged = pa.concat_tables(
        [
            run_isolated(process, batch.slice(0, mid), first, failed_row, name),
            run_isolated(process, batch.slice(mid), second, failed_row, name),
        ]
    )
    if batch.num_rows >= 4 and pc.all(pc.equal(merged.column("status"), STATUS_ERROR)).as_py():
        raise SystemicError(
            f"{name}: every row of a batch of {batch.num_rows} failed: {type(failure).__name__}: {failure}"
        ) from failure
    return merged


def free_gpu_memory(error: Exception) -> None:
    """After an out-of-memory error, give the cached blocks back before the smaller retries."""
    if type(error).__name__ == "OutOfMemoryError":
        import torch

        log.warning("out of memory on a batch: splitting it")
        torch.cuda.empty_cache()
