"""The store's invariants under random sequences of events, checked after every step (hypothesis's
rule-based state machine): files written, overwritten with other content, truncated and fixed; ingests;
caption runs, retries and interrupted runs; the dataset moved; a manifest part quarantined; a
temporary file left by a killed writer.

Invariants, against a simple model of which bytes every file holds:
- one row per image: a plain scan of manifest/ (and of caption/ after a completed run) has each
  image_id once;
- no row attached to other bytes: every ok caption equals the caption of the bytes its id names;
- nothing lost: after ingest + a completed caption run with --retry-errors, every file's content
  has an ok caption.

`make test` runs a few short sequences; `make soak` (ITEM_SOAK_STATES) many more, longer ones.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import resolve
from pipeline.engine.imageio import decode
from pipeline.engine.store import Store, check_parts

N_FILES = 4
EXAMPLES = int(os.environ.get("ITEM_SOAK_STATES", "0")) or 30
STEPS = 30 if os.environ.get("ITEM_SOAK_STATES") else 15


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


CONTENTS = [_png(seed) for seed in range(6)]
BROKEN = CONTENTS[0][:80]  # a truncated PNG: an error row at ingest
CONFIG = resolve("tiny", {"ingest": {"decode_timeout": 0}}, {"device": "cpu", "chunk_size": 2, "batch_size": 2})


class Interrupted(Exception):
    """Stands for a kill between batches: the run stops with whatever parts it wrote."""


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="item-sm-"))
        self.store = Store(self.tmp / "data")
        self.here = self.tmp / "src"  # where the dataset lives now (it moves)
        (self.here / "0_real").mkdir(parents=True)
        self.files: dict[int, bytes] = {}
        self.reference: dict[str, str] = {}  # image_id -> caption of those bytes, computed alone
        self.synced = False  # an ingest of the dataset's current place since the files last changed
        self.completed = False  # ... and a caption run completed after it

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, i: int) -> Path:
        return self.here / "0_real" / f"{i}.png"

    # --- events -------------------------------------------------------------------------------

    @initialize()
    def a_dataset_ingested(self) -> None:
        for i in range(N_FILES):
            self.path(i).write_bytes(CONTENTS[i])
            self.files[i] = CONTENTS[i]
        self.ingest()

    @rule(i=st.integers(0, N_FILES - 1), content=st.integers(0, len(CONTENTS)))
    def write_file(self, i: int, content: int) -> None:
        data = CONTENTS[content] if content < len(CONTENTS) else BROKEN
        self.path(i).write_bytes(data)
        os.utime(self.path(i), ns=(os.stat(self.path(i)).st_mtime_ns + 1_000_000,) * 2)  # a visible change
        self.files[i] = data
        self.synced = self.completed = False

    @rule()
    def ingest(self) -> None:
        run_stage("ingest", CONFIG, self.store, inputs=[self.here])
        self.synced = True

    @rule(retry=st.booleans())
    def caption(self, retry: bool) -> None:
        if not self.store.manifest.exists():
            return
        run_stage("caption", CONFIG, self.store, retry_errors=retry)
        # A row that failed because its file held other bytes at the time is an honest record; the
        # documented way back, once ingest has caught up, is --retry-errors (moves and swaps found by
        # ingest, and files that are back, are recomputed without it).
        self.completed = self.synced and retry

    @rule(after=st.integers(1, 3))
    def interrupted_caption(self, after: int) -> None:
        if not self.store.manifest.exists():
            return

        class Stop:
            done = 0

            def start(self, total: int) -> None: ...

            def advance(self, n: int) -> None:
                Stop.done += n
                if Stop.done >= after:
                    raise Interrupted

        try:
            run_stage("caption", CONFIG, self.store, progress=Stop())
        except Interrupted:
            pass
        self.completed = False

    @rule()
    def move_dataset(self) -> None:
        target = self.tmp / ("dst" if self.here.name == "src" else "src")
        shutil.move(self.here, target)
        self.here = target
        self.synced = self.completed = False

    @precondition(lambda self: self.store.manifest.exists())
    @rule()
    def quarantine_a_manifest_part(self) -> None:
        part = self.store.manifest.parts()[0]
        part.write_bytes(part.read_bytes()[:50])
        check_parts(self.store.root, quarantine=True)
        self.synced = self.completed = False

    @precondition(lambda self: self.store.manifest.exists())
    @rule()
    def leave_a_temporary_file(self) -> None:
        out = make_stage("caption", CONFIG, self.store).output
        out.path.mkdir(parents=True, exist_ok=True)
        (out.path / ".part-0000000000000000-dead.parquet.abc123.tmp").write_bytes(b"half a part")

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def one_manifest_row_per_image(self) -> None:
        if self.store.manifest.exists():
            ids = pl.read_parquet(self.store.manifest.path / "part-*.parquet")["image_id"]
            assert ids.n_unique() == ids.len()

    @invariant()
    def no_caption_of_other_bytes(self) -> None:
        for row in self._captions().filter(pl.col("status") == "ok").iter_rows(named=True):
            assert row["caption"] == self._reference(row["image_id"]), row["image_id"]

    @invariant()
    def completed_runs_leave_one_row_per_image_and_lose_nothing(self) -> None:
        if not self.completed:
            return
        captions = self._captions()
        assert captions["image_id"].n_unique() == captions.height
        current = {hashlib.sha256(d).hexdigest() for d in self.files.values() if d is not BROKEN}
        ingested = set(self.store.manifest.ids())
        ok = set(captions.filter(pl.col("status") == "ok")["image_id"].to_list())
        assert (current & ingested) <= ok  # every ingested file's content was captioned

    # --- helpers -------------------------------------------------------------------------------

    def _captions(self) -> pl.DataFrame:
        out = make_stage("caption", CONFIG, self.store).output
        if not out.exists():
            return pl.DataFrame(schema={"image_id": pl.String, "caption": pl.String, "status": pl.String})
        return pl.read_parquet(out.path / "part-*.parquet").select("image_id", "caption", "status")

    def _reference(self, image_id: str) -> str:
        if image_id not in self.reference:
            data = next(d for d in [*CONTENTS, BROKEN] if hashlib.sha256(d).hexdigest() == image_id)
            captioner = make_stage("caption", CONFIG, self.store).captioner
            self.reference[image_id] = captioner.caption([decode(data)[0]])[0]
        return self.reference[image_id]


StoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=not os.environ.get("ITEM_SOAK_STATES"),  # make test: the same sequences every run
    suppress_health_check=list(HealthCheck),
)
TestStoreInvariants = StoreMachine.TestCase
