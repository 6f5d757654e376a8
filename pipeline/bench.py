"""Benchmarks behind `item bench`: each figure with its target, appended to BENCHMARKS.md."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config import resolve
from pipeline.store import Store

log = logging.getLogger(__name__)


def bench_fit(n: int = 80_000, heads: tuple[str, ...] = ("mlp", "lightgbm", "logreg")) -> list[dict[str, Any]]:
    """Fit each head on `n` cached 768-d rows (synthetic rows written into a store): wall seconds."""
    from pipeline.runner import make_stage, run_stage
    from pipeline.synthetic import write_synthetic

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        base = resolve("paper")
        write_synthetic(store, make_stage("distance", base, store).fingerprint, n, dim=768, signal=2.0)
        for head in heads:
            config = resolve("paper", {"fit": {"head": head}})
            start = time.perf_counter()
            stats = run_stage("fit", config, store)
            seconds = time.perf_counter() - start
            out.append(
                {
                    "figure": f"fit {head} on {n} x 768 cached rows",
                    "value": round(seconds, 2),
                    "unit": "s",
                    "target": "well under 60 s",
                    "ok": seconds < 60,
                    "rows": stats.ok,
                }
            )
    return out
