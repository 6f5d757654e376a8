"""Running a model on one batch with isolation: a batch that raises is split in halves until the
failing rows are found (they get error rows), so one bad image never costs its neighbours' rows.

An out-of-memory batch is split the same way (after freeing the GPU cache), and the stage's
`BatchSize` remembers the size that fit: later batches start there instead of running out of memory
first, every one of them. When every row of a large batch fails, the cause is the model or the code,
not the input: the run stops (SystemicError).
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


class BatchSize:
    """Rows per model call: the configured size until a batch runs out of memory, then the half of the
    one that did not fit, for the rest of the run (a stage keeps one, across chunks).

    Args:
        configured: the size to start at.
    """

    def __init__(self, configured: int) -> None:
        self.configured = configured
        self.current = configured

    def out_of_memory(self, rows: int) -> None:
        if rows // 2 < self.current:
            self.current = max(1, rows // 2)
            log.warning("out of memory at a batch of %d: continuing at %d", rows, self.current)


def run_isolated(
    process: Process,
    batch: pa.Table,
    prepared: list[Any] | None,
    failed_row: FailedRow,
    name: str,
    size: BatchSize | None = None,
) -> pa.Table:
    """`process(batch, prepared)`, one output row per input row; rows that make it raise get
    `failed_row(image_id, exception)`.

    Args:
        process: the stage's batch function (returns a table of as many rows as the batch).
        prepared: per-row inputs prepared ahead (split alongside the batch), or None.
        failed_row: the error row of one image the process raised on.
        name: the stage, for messages.
        size: the stage's batch size; a batch larger than its current value runs in pieces of it.
    """
    if size is not None and batch.num_rows > size.current:
        step = size.current
        return pa.concat_tables(
            [
                run_isolated(
                    process,
                    batch.slice(i, step),
                    None if prepared is None else prepared[i : i + step],
                    failed_row,
                    name,
                    size,
                )
                for i in range(0, batch.num_rows, step)
            ]
        )
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
        if size is not None and is_out_of_memory(e):
            size.out_of_memory(batch.num_rows)
    else:
        if table.num_rows != batch.num_rows:
            raise SystemicError(f"{name}.process returned {table.num_rows} rows for {batch.num_rows}")
        return table
    free_gpu_memory(failure)
    mid = batch.num_rows // 2
    first, second = (None, None) if prepared is None else (prepared[:mid], prepared[mid:])
    merged = pa.concat_tables(
        [
            run_isolated(process, batch.slice(0, mid), first, failed_row, name, size),
            run_isolated(process, batch.slice(mid), second, failed_row, name, size),
        ]
    )
    if batch.num_rows >= 4 and pc.all(pc.equal(merged.column("status"), STATUS_ERROR)).as_py():
        raise SystemicError(
            f"{name}: every row of a batch of {batch.num_rows} failed: {type(failure).__name__}: {failure}"
        ) from failure
    return merged


# How CUDA libraries say they ran out of memory when torch does not raise its OutOfMemoryError itself.
_ALLOC_FAILED = ("out of memory", "ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or a CUDA library's allocation failure (cuBLAS, cuDNN)."""
    if type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _ALLOC_FAILED)


def free_gpu_memory(error: Exception) -> None:
    """After any allocation failure, give the cached blocks back before the smaller retries."""
    if not is_out_of_memory(error):
        return
    import gc

    import torch

    gc.collect()  # tensors only a dropped traceback held
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
