"""Progress: stages say their total first and report per batch; the CLI's bar has total and ETA on a
terminal and prints a periodic one-line log elsewhere."""

from __future__ import annotations

import logging

from pipeline.app.progress import ProgressBar
from pipeline.app.runner import run_stage
from pipeline.engine.store import Store
from tests.conftest import tiny


class Recorder:
    """A caller's progress (the engine's Progress protocol): what the stage told it, in order."""

    def __init__(self) -> None:
        self.totals: list[int] = []
        self.steps: list[int] = []

    def start(self, total: int) -> None:
        self.totals.append(total)

    def advance(self, n: int) -> None:
        self.steps.append(n)


def test_a_feature_stage_gives_its_total_then_advances_per_batch(tmp_path, image_root):
    store = Store(tmp_path)
    config = tiny(chunk_size=8, batch_size=3)
    ingest = Recorder()
    run_stage("ingest", config, store, progress=ingest, inputs=[image_root])
    assert ingest.totals == [24] and sum(ingest.steps) == 24
    caption = Recorder()
    stats = run_stage("caption", config, store, progress=caption)
    assert caption.totals == [24] and sum(caption.steps) == stats.computed == 24
    assert len(caption.steps) == 9  # 3 chunks of 8 rows, each in batches of 3, 3 and 2
    again = Recorder()
    run_stage("caption", config, store, progress=again)
    assert again.totals == [] and again.steps == []  # nothing to do: no bar at all


def test_the_log_line_has_count_rate_and_eta(caplog):
    bar = ProgressBar("embed", tty=False, every=0.0)
    bar.start(200)
    with caplog.at_level(logging.INFO, logger="item"):
        bar.advance(50)
    assert caplog.messages and caplog.messages[-1].startswith("embed: 50/200 (25.0%), ")
    assert "img/s" in caplog.messages[-1] and ", ETA " in caplog.messages[-1]
    bar.close()


def test_the_terminal_bar_has_a_total():
    bar = ProgressBar("ground", tty=True)
    bar.start(12)
    bar.advance(5)
    assert bar.bar.total == 12 and bar.bar.n == 5
    bar.close()
