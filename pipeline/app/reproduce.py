"""`item reproduce`: the paper's protocol (method/protocol.py) on the user's copies of its datasets,
printed as Tables I-III with the paper's ITEM row and the difference (method/tables.py).

Table I (ACC) and Table II (AP): CNNDetection's test set (8 GANs and Deepfakes) and
UniversalFakeDetect's `diffusion_datasets` (ADM, LDM, Glide, DALLE); Table III (ACC/AP): GenImage's
val split (ADM, Glide, VQDM) and DiffusionForensics' test split (SD-v1, SD-v2, LDM, DALLE-2,
Midjourney and four GANs), the paper's choice where the two overlap. ACC at the fixed 0.5 threshold.

Nothing here computes a feature: the images go through ingest (with their dataset, generator and
split set by the plan), the feature stages, fit and evaluate, so every result is cached and a re-run
computes nothing. The data directory is checked against the plan before ingest and after it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.app.runner import StageDone, fit_and_evaluate, run_steps
from pipeline.engine.config import PipelineConfig
from pipeline.engine.executors import Executor
from pipeline.engine.progress import Progress
from pipeline.engine.stage import STAGES, RunStats, Stage
from pipeline.engine.store import Store, write_json
from pipeline.method.protocol import (
    DATASETS,
    TRAIN_DATASET,
    Plan,
    Protocol,
    check_subset,
    columns_of,
    lost_test_images,
    make_plan,
    refuse_other_subsets,
    subset_ids,
)
from pipeline.method.tables import Column, compared, render

log = logging.getLogger(__name__)


def protocol_config(config: PipelineConfig) -> PipelineConfig:
    """The configuration with the paper's protocol: fit on the ProGAN subset's train rows (calibrated on
    its val rows), evaluate the test split at the fixed 0.5 threshold."""
    fit = dataclasses.replace(
        config.stage("fit"),
        train_datasets=(TRAIN_DATASET,),
        train_generators=(),
        train_split="train",
        calibration_split="val",
    )
    evaluate = dataclasses.replace(config.stage("evaluate"), split="test", threshold=0.5)
    return dataclasses.replace(config, stages={**config.stages, "fit": fit, "evaluate": evaluate})


@dataclass
class Reproduction:
    """What a reproduction produced: the tables as Markdown and JSON, where they were written, and how
    many rows its stages computed (0 on a re-run)."""

    markdown: str
    result: dict[str, Any]
    paths: list[Path]
    computed: int


def reproduce(
    roots: dict[str, list[str | Path]],
    config: PipelineConfig,
    store: Store,
    protocol: Protocol | None = None,
    progress: Callable[[str], Progress | None] | None = None,
    executor: Executor | None = None,
    retry_errors: bool = False,
    on_stage: StageDone | None = None,
) -> Reproduction:
    """Run the paper's protocol on the datasets under `roots` (dataset key -> folders or archives) and
    build Tables I-III with the paper's ITEM row and the difference.

    Args:
        progress: stage name -> its Progress (a progress bar), or None.
        on_stage: called with each stage and its stats as it finishes (the CLI prints them).
    """
    protocol = protocol or Protocol()  # the paper's counts
    plan = make_plan(roots, protocol)
    config = protocol_config(config)
    # Checked before ingest (a refused run leaves the manifest as it was), and after, with every id.
    refuse_other_subsets(check_subset(plan, store, subset_ids(plan, store)), store)
    done: list[tuple[Stage, RunStats]] = []

    def steps(names: list[str], ids: set[str] | None = None, **options: Any) -> list[tuple[Stage, RunStats]]:
        ran = run_steps(names, config, store, progress, executor, retry_errors, options, ids, on_stage)
        done.extend(ran)
        return ran

    ids, held_elsewhere = _ingest(plan, store, steps)
    # This protocol's images only, not whatever else the store holds.
    steps(STAGES.feature_stages(), ids=set(ids.values()))
    if plan.columns:
        ran = fit_and_evaluate(config, store, progress, on_stage)
        done += ran
        head, evaluation = ran[0][0].model_dir, ran[1][0].result
    else:  # no test images: nothing to evaluate
        head, evaluation = steps(["fit"])[0][0].model_dir, None
    result = build_result(plan, protocol, config, head, evaluation, held_elsewhere)
    markdown = render(result)
    paths = write_reports(store, result, markdown)
    return Reproduction(markdown, result, paths, sum(stats.computed for _, stats in done))


def _ingest(plan: Plan, store: Store, steps: Callable[..., list]) -> tuple[dict[str, str], dict[str, Any]]:
    """Ingest the plan's files; their image ids (path -> id), and what the manifest holds elsewhere (the
    same bytes ingested first as something else): per generator, test images out of their column, and
    per place, subset images out of training."""
    [(ingest, _)] = steps(["ingest"], ingest={"sources": plan.sources})
    ids = {s.path: i for s, i in zip(plan.sources, ingest.image_ids(plan.sources), strict=True) if i is not None}
    check = check_subset(plan, store, ids)
    refuse_other_subsets(check, store)
    if check.shared:
        log.warning(
            "reproduce: %d image(s) of the ProGAN subset are also test images of the benchmarks (%s; the same "
            "bytes, ingested first as those): left out of training",
            sum(check.shared.values()),
            ", ".join(check.shared),
        )
    return ids, {"test": lost_test_images(plan, store, ids), "training": dict(check.shared)}


# --- the tables ------------------------------------------------------------------------------------


def build_result(
    plan: Plan,
    protocol: Protocol,
    config: PipelineConfig,
    head: Path,
    evaluation: dict[str, Any] | None,
    held_elsewhere: dict[str, Any],
) -> dict[str, Any]:
    """The three tables as data (per column our figures, the paper's and the difference) and the protocol."""
    groups = evaluation["generators"] if evaluation and evaluation.get("split") == "test" else {}
    protocol_info = {
        **dataclasses.asdict(protocol),
        "counts": plan.counts,
        "subset": plan.subset,
        "head": head.name,
        "profile": config.profile,
        "threshold": config.stage("evaluate").threshold,
        "given": plan.given,
        "held_elsewhere": held_elsewhere,
    }
    return {"protocol": protocol_info, "tables": compared(groups, lambda column: _located(column, plan, protocol))}


def _located(column: Column, plan: Plan, protocol: Protocol) -> tuple[str | None, str]:
    """The generator the plan scores for `column`, and why there is none (when there is none)."""
    dataset = DATASETS[column.dataset]
    generator = plan.columns.get((column.dataset, column.label))
    if column.dataset not in plan.given:
        return generator, f"{dataset.title} not given ({dataset.option})"
    folders = next(c.folders for c in columns_of(protocol) if (c.dataset, c.label) == (column.dataset, column.label))
    return generator, f"not found under {dataset.option} (a folder named {' or '.join(folders)})"


def write_reports(store: Store, result: dict[str, Any], markdown: str) -> list[Path]:
    """reports/reproduce.md and reports/reproduce.json."""
    store.reports.mkdir(parents=True, exist_ok=True)
    md = store.reports / "reproduce.md"
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(markdown)
    tmp.replace(md)  # complete or absent
    return [md, write_json(store.reports / "reproduce.json", result)]
