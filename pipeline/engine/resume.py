"""Which images a feature stage computes: resume by keys.

A stage's work is the driver's ids with no current row in its output. An error row counts as done
(a retry flag redoes those), except when its kind says the file could not be read and the cause is
gone: the file at the manifest's path is back, or holds the image's bytes again (ingest re-pointed the
image, or the user restored the file). Decided by the rows' `error_kind` column, never their message.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from pipeline.engine import errors, locations
from pipeline.engine.keyindex import KeySet
from pipeline.engine.keys import image_id_of_bytes
from pipeline.engine.store import PartDir

READ_BATCH = 64  # files read at once when checking whether read failures are readable again


def todo(
    driver: PartDir, out: PartDir, manifest: PartDir, ids: Iterable[str] | None = None, retry_errors: bool = False
) -> list[str]:
    """Driver ids of images in the manifest without a row in `out`, in driver order (optionally only `ids`).

    With `retry_errors`, ids whose rows are all errors are computed again too (the new row
    supersedes the old one for every reader).
    """
    source = driver.index()
    index = out.index()
    if retry_errors:
        done: KeySet = KeySet(index.codes[index.ok])
    else:
        again = readable_again(out, manifest)
        done = KeySet(index.codes[~KeySet.of(again).contains(index.codes)]) if again else index
    mask = ~done.contains(source.codes)
    if driver.path != manifest.path:  # an image no longer in the manifest (re-ingested as new bytes) is no work
        mask &= manifest.index().contains(source.codes)
    if ids is not None:
        mask &= KeySet.of(pa.array(list(ids), pa.string())).contains(source.codes)
    return list(dict.fromkeys(source.ids(np.nonzero(mask)[0]).to_pylist()))


def error_kinds(out: PartDir) -> dict[str, str | None]:
    """image_id -> error kind of each key whose current row is an error row. Costs nothing (no part
    read beyond the key index) when there are none."""
    index = out.index()
    if index.ok.all():
        return {}
    current = index.current()
    failed = index.ids(current[~index.ok[current]]).to_pylist()
    if not failed:
        return {}
    kinds = out.read(["image_id", "error_kind"], ids=failed)
    return dict(zip(*(kinds.column(c).to_pylist() for c in ("image_id", "error_kind")), strict=True))


def readable_again(out: PartDir, manifest: PartDir) -> list[str]:
    """Ids whose current row is a read failure whose cause is gone. Costs nothing when there are no
    error rows; reads the file of each read-failure row (a file still missing stays an error row)."""
    unread = [i for i, k in error_kinds(out).items() if k in errors.READ_FAILURES]
    if not unread:
        return []
    paths = manifest.read(["image_id", "path"], ids=unread)
    ids, where = paths.column("image_id").to_pylist(), paths.column("path").to_pylist()
    present = [(i, p) for i, p in zip(ids, where, strict=True) if locations.exists(p)]
    again = []
    for start in range(0, len(present), READ_BATCH):  # bounded memory: a few files' bytes at a time
        some = present[start : start + READ_BATCH]
        datas = locations.read_many([p for _, p in some])
        again += [i for (i, _), data in zip(some, datas, strict=True) if _holds(data, i)]
    return again


def _holds(data: bytes | OSError, image_id: str) -> bool:
    return not isinstance(data, OSError) and image_id_of_bytes(data) == image_id
