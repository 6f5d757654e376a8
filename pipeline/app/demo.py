"""`item demo`: a synthetic image set made in code (nothing downloaded) through every stage.

Real images are smooth random scenes (a sky gradient, ground, soft blobs, mild sensor noise).
Fake images are drawn from the same scene generator and then carry a generator's artifact:
`toygan` a periodic checkerboard from transposed-convolution upsampling, `toydiff` an over-smoothed,
over-saturated look. A detector can learn either difference; the tiny profile's random-weight
models turn it into features the head separates. The tests draw their images here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from pipeline.app.api import predict, write_rows
from pipeline.app.report import build as build_report
from pipeline.app.runner import StageDone, cached_comparison, compare, run_steps, stage_range
from pipeline.engine.config import PipelineConfig
from pipeline.engine.errors import UsageError
from pipeline.engine.progress import Progress
from pipeline.engine.stage import Stage
from pipeline.engine.store import Store

SIZE = 256
GENERATORS = ("toygan", "toydiff")
IMAGES = Path("raw") / "demo"  # under the demo's data root: its images, and its unseen ones beside them
UNSEEN = Path("raw") / "demo-unseen"
DEFAULT_ROOT = Path("data") / "demo"  # a data root of its own: a user's `data/` never meets demo rows
MARKER = "DEMO"  # in the demo's root: what `make clean-demo` checks before it removes the folder
BASELINES = ("item", "unifd", "defake", "cosine", "format")  # the methods the demo compares


def scene(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A smooth random RGB scene, float in [0, 1], shape (size, size, 3)."""
    y, x = np.mgrid[0:size, 0:size] / size
    horizon = rng.uniform(0.3, 0.7)
    sky = rng.uniform(0.4, 1.0, 3) * (1 - 0.5 * y[..., None])
    ground = rng.uniform(0.1, 0.6, 3) * (0.7 + 0.3 * y[..., None])
    img = np.where((y < horizon)[..., None], sky, ground)
    for _ in range(rng.integers(2, 6)):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.9), rng.uniform(0.05, 0.2)
        mask = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r**2)))[..., None]
        img = img * (1 - mask) + rng.uniform(0, 1, 3) * mask
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


def add_artifact(img: np.ndarray, generator: str, rng: np.random.Generator) -> np.ndarray:
    if generator == "toygan":
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        checker = (((yy // 2) + (xx // 2)) % 2) * 2 - 1
        return np.clip(img + 0.25 * checker[..., None] * rng.uniform(0.8, 1.2), 0, 1)
    if generator == "toydiff":
        pil = Image.fromarray((img * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(5))
        smooth = np.asarray(pil, dtype=np.float64) / 255
        mean = smooth.mean(axis=2, keepdims=True)
        return np.clip(mean + 2.5 * (smooth - mean), 0, 1)
    raise ValueError(f"unknown demo generator {generator!r}")


def claim_root(root: Path) -> None:
    """Make `root` the demo's data root, or refuse one that holds other data (the demo's rows must never
    mix with a user's, and `make clean-demo` removes the whole folder)."""
    marker = root / MARKER
    if marker.exists():
        return
    demo_raw = {IMAGES.name, UNSEEN.name}
    others = sorted(p.name for p in root.iterdir() if p.name != "raw") if root.is_dir() else []
    others += sorted(f"raw/{p.name}" for p in (root / "raw").glob("*") if p.name not in demo_raw)
    if others:
        raise UsageError(
            f"{root} holds data that is not the demo's ({', '.join(others[:4])}): the demo runs in a data "
            f"directory of its own (default {DEFAULT_ROOT}); give a new or empty --data-dir"
        )
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by `item demo`; `make clean-demo` removes this folder\n")


def make_images(root: Path, n_per_class: int = 40, seed: int = 0) -> Path:
    """Write `root/<generator>/{0_real,1_fake}/NNNN.png` (skips files that already exist)."""
    for g_index, generator in enumerate(GENERATORS):
        for label, folder in enumerate(("0_real", "1_fake")):
            out = root / generator / folder
            out.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                path = out / f"{i:04d}.png"
                if path.exists():
                    continue
                rng = np.random.default_rng([seed, g_index, label, i])
                img = scene(rng)
                if label == 1:
                    img = add_artifact(img, generator, rng)
                tmp = path.with_suffix(".tmp")
                Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp, format="PNG")
                tmp.replace(path)
    return root


def make_unseen(root: Path, n_per_class: int = 4, seed: int = 1) -> Path:
    """An unlabelled folder for predict: new scenes of both kinds, and one truncated file."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_per_class):
        for label, generator in enumerate(("real", *GENERATORS)):
            path = root / f"{generator}-{i:02d}.png"
            if path.exists():
                continue
            rng = np.random.default_rng([seed, label, i])
            img = scene(rng)
            if generator != "real":
                img = add_artifact(img, generator, rng)
            Image.fromarray((img * 255).round().astype(np.uint8)).save(path, format="PNG")
    broken = root / "broken.png"
    if not broken.exists():
        broken.write_bytes((root / "real-00.png").read_bytes()[:300])
    return root


@dataclass
class DemoRun:
    """What the demo did, for the CLI to print."""

    evaluation: Stage  # the evaluate stage of the fitted head
    comparison: list[dict[str, Any]]  # the baselines' results (from reports/ when nothing changed)
    fresh: bool  # whether the comparison and the report were made now
    derived: int  # images of the robustness grid
    report: Path
    unseen: Path
    predictions: list[dict[str, Any]]
    predictions_file: Path
    computed: int  # rows the stages computed (0 on a re-run)


def run_demo(
    config: PipelineConfig,
    store: Store,
    images: Path,
    progress: Callable[[str], Progress | None] | None = None,
    on_stage: StageDone | None = None,
) -> DemoRun:
    """The demo's recipe on `images` (from `make_images`), with the orchestration of `item run`: ingest ..
    fit, the robustness grid (9 perturbed copies of each test image) through the per-image stages,
    evaluate; then the baselines on the same cache and the report (both skipped when nothing changed),
    and predict on a folder of unseen images."""

    def steps(names: list[str], **options: dict[str, Any]) -> list[tuple[Stage, Any]]:
        return run_steps(names, config, store, progress, options=options, on_stage=on_stage)

    ran = steps(stage_range("ingest", "fit"), ingest={"inputs": [images], "dataset": "demo"})
    perturbed = steps(["perturb"])
    derived = perturbed[0][0].sources
    ran += perturbed + steps(stage_range("ingest", "distance"), ingest={"sources": derived})
    evaluated = steps(["evaluate"])
    computed = sum(stats.computed for _, stats in ran + evaluated)
    report = store.reports / "report.html"
    comparison = cached_comparison(store)
    fresh = computed or not report.exists() or comparison is None
    if fresh:
        comparison = compare(list(BASELINES), config, store)
        report = build_report(config, store)
    unseen = make_unseen(store.root / UNSEEN)
    rows = predict([unseen], data_dir=store.root, runtime={"chunk_size": 64}, params={})  # the demo's own models
    out = store.reports / "demo-predictions.csv"
    write_rows(rows, out)
    return DemoRun(evaluated[0][0], comparison, bool(fresh), len(derived), report, unseen, rows, out, computed)
