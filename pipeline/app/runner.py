"""Orchestration: build stages by name, run them in the registry's order, compare methods, and report
what the store holds. The CLI, the demo, the Python API and DVC all go through here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

import stages  # noqa: F401  (registers the built-in stages)
from pipeline.engine.config import PipelineConfig
from pipeline.engine.errors import UsageError, tally
from pipeline.engine.executors import Executor
from pipeline.engine.feature import FeatureStage
from pipeline.engine.progress import Progress
from pipeline.engine.stage import MANIFEST, STAGES, RunStats, Stage
from pipeline.engine.store import Store, read_json, write_json
from pipeline.method.metrics import LABELS, table
from stages.baselines import METHODS

log = logging.getLogger(__name__)


def make_stage(name: str, config: PipelineConfig, store: Store, **options: Any) -> Stage:
    """An instance of the named stage (`options` go to jobs that take them, e.g. ingest's inputs)."""
    return STAGES.get(name)(config, store, **options)


StageDone = Callable[[Stage, RunStats], None]


def run_steps(
    names: Iterable[str],
    config: PipelineConfig,
    store: Store,
    progress: Callable[[str], Progress | None] | None = None,
    executor: Executor | None = None,
    retry_errors: bool = False,
    options: dict[str, dict[str, Any]] | None = None,
    ids: set[str] | None = None,
    on_stage: StageDone | None = None,
) -> list[tuple[Stage, RunStats]]:
    """Build and run the stages `names` in the order given; each stage with its stats.

    Args:
        progress: stage name -> its Progress (a progress bar), or None.
        executor, retry_errors, ids: steer the per-image feature stages (`ids`: only these images);
            a whole-dataset job takes none of them.
        options: per stage name, its constructor options (ingest's inputs, evaluate's models).
        on_stage: called with each stage and its stats as it finishes (the CLI prints them).
    """
    done = []
    for name in names:
        stage = make_stage(name, config, store, **(options or {}).get(name, {}))
        bar = progress(name) if progress else None
        if isinstance(stage, FeatureStage):
            stats = stage.run(ids=ids, executor=executor, progress=bar, retry_errors=retry_errors)
        else:
            stats = stage.run(progress=bar)
        done.append((stage, stats))
        if on_stage is not None:
            on_stage(stage, stats)
    return done


def run_stage(
    name: str,
    config: PipelineConfig,
    store: Store,
    progress: Progress | None = None,
    executor: Executor | None = None,
    retry_errors: bool = False,
    ids: set[str] | None = None,
    **stage_options: Any,
) -> RunStats:
    """Run one stage by name (see `run_steps`); `stage_options` go to its constructor (ingest's inputs)."""
    bar = (lambda _: progress) if progress else None
    return run_steps([name], config, store, bar, executor, retry_errors, {name: stage_options}, ids)[0][1]


def fit_and_evaluate(
    config: PipelineConfig,
    store: Store,
    progress: Callable[[str], Progress | None] | None = None,
    on_stage: StageDone | None = None,
) -> list[tuple[Stage, RunStats]]:
    """Fit the head (nothing to do when it is cached), then evaluate that head (not models/LATEST's)."""
    options = {"evaluate": {"models": [make_stage("fit", config, store).model_dir]}}
    return run_steps(["fit", "evaluate"], config, store, progress, options=options, on_stage=on_stage)


def stage_range(first: str, last: str) -> list[str]:
    """The steps from `first` to `last` inclusive, in pipeline order."""
    order = STAGES.order()
    if first not in order or last not in order or order.index(first) > order.index(last):
        raise UsageError(f"--from/--to must be stages in order: {', '.join(order)}")
    return order[order.index(first) : order.index(last) + 1]


def compare(methods: list[str], config: PipelineConfig, store: Store, split: str = "test") -> list[dict[str, Any]]:
    """One evaluation result per method, in the order given: `item` is the fit stage's head scored by
    evaluate; every other name is a baseline trained on the same cache. Writes the comparison tables."""
    known = ["item", *METHODS.names()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r} for --heads; known: {', '.join(known)}")
    baselines = [m for m in methods if m != "item"]
    by_name: dict[str, dict[str, Any]] = {}
    if baselines:
        options = {"baselines": {"methods": baselines, "split": split}}
        [(job, _)] = run_steps(["baselines"], config, store, options=options)
        by_name.update({r["method"]: r for r in job.results})
    if "item" in methods:
        [_, (evaluate, _)] = fit_and_evaluate(config, store)
        by_name["item"] = {**evaluate.result, "method": "item"}
    results = []
    for name in methods:
        result = dict(by_name[name])
        result["model"], result["model_dir"] = name, result["model"]
        results.append(result)
    write_comparison(results, store)
    return results


def write_comparison(results: list[dict[str, Any]], store: Store) -> None:
    store.reports.mkdir(parents=True, exist_ok=True)
    for metric in ("acc", "ap"):
        (store.reports / f"comparison_{metric}.csv").write_text(table(results, metric, markdown=False) + "\n")
        (store.reports / f"comparison_{metric}.md").write_text(f"### {LABELS[metric]}\n\n{table(results, metric)}\n")
    summary = {r["method"]: {"model": r["model_dir"], "all": r["all"], "mean": r["mean"]} for r in results}
    write_json(store.reports / "comparison.json", summary)
    write_json(store.reports / COMPARISON_RESULTS, results)  # in full: a later run prints the same tables


COMPARISON_RESULTS = "comparison_results.json"


def cached_comparison(store: Store) -> list[dict[str, Any]] | None:
    """The results the last `compare` wrote, or None."""
    results = read_json(store.reports / COMPARISON_RESULTS)
    return results if isinstance(results, list) and results else None


def write_summary(stage: Stage) -> Path | None:
    """A small JSON per stage (`data/dvc/<stage>.json`) that changes exactly when the stage's output does.

    DVC tracks these instead of thousands of part files: each names the fingerprint, the counts and a
    digest of the current (image_id, status) pairs (fit: the head's folder).
    """
    summary = stage.summary()
    if summary is None:
        return None
    return write_json(stage.store.root / "dvc" / f"{stage.name}.json", summary)


@dataclass
class StageStatus:
    """Counts of one stage's rows under the current configuration, against the manifest."""

    stage: str
    fingerprint: str
    ok: int = 0
    error: int = 0
    missing: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    other_fingerprints: list[str] = field(default_factory=list)
    # Texts (captions and phrases) past the text encoder's context, embedded cut to it: the sum of the
    # ok rows' TEXT_CUTS column (None: the stage does not count them), and the ok rows written before
    # the column was (null there: unknown).
    cut_texts: int | None = None
    cut_unknown: int = 0


ERROR_KEYS = ["image_id", "status", "error_kind", "error_stage"]
TEXT_CUTS = "truncated_texts"  # embed's per-row count of texts cut to CLIP's 77 tokens


def _counts(table, manifest_ids, own: str) -> tuple[int, int, int, dict[str, int]]:
    """ok, error and missing counts of a stage's rows, errors grouped by kind and stage of origin."""
    ids = table.column("image_id")
    in_manifest = table.filter(pc.is_in(ids, value_set=manifest_ids))
    unique = in_manifest.group_by("image_id").aggregate(
        [("status", "max"), ("error_kind", "min"), ("error_stage", "min")]
    )  # "ok" > "error": a retried id counts as ok
    status = unique.column("status_max").to_pylist()
    errors = tally(status, *(unique.column(c).to_pylist() for c in ("error_kind_min", "error_stage_min")), own)
    ok = sum(1 for s in status if s == "ok")
    return ok, sum(errors.values()), len(manifest_ids) - len(status), errors


def status(config: PipelineConfig, store: Store) -> list[StageStatus]:
    """Per stage: ok rows, error rows by kind, and manifest images with no row yet."""
    manifest = store.manifest.read(ERROR_KEYS)  # errors needed: read the rows
    manifest_ids = manifest.column("image_id").combine_chunks()
    writer = STAGES.producer(MANIFEST)
    ok, err, _, errors = _counts(manifest, manifest_ids, writer)
    report = [StageStatus(writer, MANIFEST, ok, err, 0, errors)]
    for name in STAGES.feature_stages():
        stage = make_stage(name, config, store)
        fp = stage.fingerprint
        cuts = TEXT_CUTS in getattr(getattr(stage, "schema", None), "names", ())
        part_dir = stage.output if cuts else store.features(name, fp)  # the schema: older parts read null
        columns = [*ERROR_KEYS, TEXT_CUTS] if cuts else ERROR_KEYS
        table = part_dir.read(columns) if part_dir.exists() else manifest.schema.empty_table().select(ERROR_KEYS)
        ok, err, missing, errors = _counts(table, manifest_ids, name)
        others = [f for f in store.fingerprints(name) if f != fp]
        row = StageStatus(name, fp, ok, err, missing, errors, others)
        if cuts:
            row.cut_texts, row.cut_unknown = _cut_texts(table, manifest_ids)
        report.append(row)
    return report


def _cut_texts(table, manifest_ids) -> tuple[int, int]:
    """The sum of TEXT_CUTS over the ok rows of manifest images, and how many of those rows have it null."""
    if TEXT_CUTS not in table.column_names:
        return 0, 0
    wanted = pc.and_(pc.is_in(table.column("image_id"), value_set=manifest_ids), pc.equal(table["status"], "ok"))
    ok = table.filter(wanted)
    column = ok.column(TEXT_CUTS)
    return int(pc.sum(column).as_py() or 0), column.null_count
