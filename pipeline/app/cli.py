"""The `item` command line: one command per stage, plus status and demo."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.app import demo as demo_recipe
from pipeline.app.api import check_output, choose_head, write_rows
from pipeline.app.api import predict as run_predict
from pipeline.app.plugins import load_plugins
from pipeline.app.progress import ProgressBar
from pipeline.app.reproduce import reproduce
from pipeline.app.runner import compare, run_steps, stage_range, write_summary
from pipeline.app.runner import status as stage_status
from pipeline.engine.config import PROFILES, load_params, resolve
from pipeline.engine.errors import UsageError
from pipeline.engine.executors import make_executor
from pipeline.engine.feature import IncompleteRunError, SystemicError, WorkerMismatchError
from pipeline.engine.log import setup_logging
from pipeline.engine.registry import UnknownNameError
from pipeline.engine.stage import STAGES
from pipeline.engine.store import LockedError, Store, StoreError, check_parts, read_json
from pipeline.method.evaluation import format_tables
from pipeline.method.heads import describe, varying
from pipeline.method.protocol import Protocol
from pipeline.method.rows import all_models, latest_model
from stages.baselines import leakage_warning
from stages.evaluate import labelled_results

app = typer.Typer(
    add_completion=True,  # item --install-completion / --show-completion
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="ITEM: detect AI-generated images by image-text misalignment. Each stage reads and writes "
    "Parquet under the data directory, keyed by the sha256 of each image file; re-running a stage "
    "computes only what is missing.",
)
log = logging.getLogger("item")


def _version(value: bool) -> None:
    if value:
        from pipeline import __version__

        typer.echo(f"item {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """ITEM: detect AI-generated images by image-text misalignment."""


DEFAULT_PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class Common:
    """The options commands share, declared once (`OPTIONS`); a command takes those it names with
    `@common(...)` and receives them as its `opts` (the others keep these defaults)."""

    data_dir: Path = Path("data")
    profile: str | None = None
    params: Path | None = None
    device: str | None = None
    batch_size: int | None = None
    chunk_size: int | None = None
    retry_errors: bool = False
    executor: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    verbose: bool = False

    @property
    def runtime(self) -> dict[str, Any]:
        return {"device": self.device, "batch_size": self.batch_size, "chunk_size": self.chunk_size}


# The shared options, as typer declares them (the defaults are Common's).
OPTIONS = {
    "data_dir": Annotated[Path, typer.Option("--data-dir", "-d", envvar="ITEM_DATA_DIR", help="Data root.")],
    "profile": Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            help=f"Model profile: {' | '.join(PROFILES.names())} (default: params.yaml's, else paper).",
        ),
    ],
    "params": Annotated[
        Path | None,
        typer.Option("--params", help="A params.yaml with per-stage overrides (default: ./params.yaml when present)."),
    ],
    "device": Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")],
    "batch_size": Annotated[
        int | None,
        typer.Option(
            "--batch-size", help="Per model call: images (caption, ground) or crops (embed); default: each stage's."
        ),
    ],
    "chunk_size": Annotated[int | None, typer.Option("--chunk-size", help="Rows per part file.")],
    "retry_errors": Annotated[bool, typer.Option(help="Recompute the images whose rows are errors.")],
    "executor": Annotated[
        str,
        typer.Option(
            help="local (this process) | dask (a local cluster: one worker per GPU, or --workers CPU workers)."
        ),
    ],
    "scheduler": Annotated[str | None, typer.Option(help="Run on an existing dask scheduler (tcp://host:8786).")],
    "workers": Annotated[
        int | None, typer.Option(help="Workers of a local dask cluster (default: one per GPU, else 2 CPU workers).")
    ],
    "verbose": Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")],
}
RUN = tuple(OPTIONS)  # the commands that run stages: caption .. distance, run, reproduce
BASIC = ("data_dir", "profile", "params", "verbose")


def common(*names: str):
    """Give a command the shared options `names`, in place of its `opts: Common` parameter (`--verbose`
    last, as on every command); the command is called with them collected in `opts`."""
    defaults = {f.name: f.default for f in dataclasses.fields(Common)}

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        shared = {
            n: inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n], annotation=OPTIONS[n])
            for n in names
        }
        verbose = [shared.pop("verbose")] if "verbose" in shared else []
        params = []
        for p in signature.parameters.values():  # keyword-only: typer passes every option by name
            params += shared.values() if p.name == "opts" else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)]

        @functools.wraps(command)
        def with_options(**kwargs: Any) -> Any:
            opts = Common(**{n: kwargs.pop(n) for n in names})
            return command(**kwargs, opts=opts)

        with_options.__signature__ = signature.replace(parameters=[*params, *verbose])
        return with_options

    return decorate


def _params(path: Path | None) -> dict:
    """The parsed params file: the one named (which must exist), else ./params.yaml if present."""
    return load_params(path or DEFAULT_PARAMS, required=path is not None)


def _setup(opts: Common, overrides: dict[str, dict] | None = None, read_params: bool = True):
    """The resolved configuration (profile <- params file <- overrides <- runtime options) and the store.

    `read_params=False` for commands whose configuration comes from elsewhere (the demo's is the
    tiny profile, predict's is the head's own): a params.yaml in the folder must not change them.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    setup_logging(opts.verbose)
    loaded = _params(opts.params) if read_params else {}
    for section, values in (overrides or {}).items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            loaded[section] = {**(loaded.get(section) or {}), **given}
    return resolve(opts.profile, loaded, opts.runtime), Store(opts.data_dir)


class _Bars:
    """One progress bar per stage (tqdm on a terminal, a periodic log line elsewhere), with log lines
    redirected through tqdm while bars are open so they do not break them."""

    UNITS = {"ingest": "file", "baselines": "method"}

    def __init__(self) -> None:
        self.open: list[ProgressBar] = []

    def __call__(self, name: str) -> ProgressBar:
        bar = ProgressBar(name, self.UNITS.get(name, "img"))
        self.open.append(bar)
        return bar

    def __enter__(self) -> _Bars:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = logging_redirect_tqdm()  # the root logger's console handler writes through tqdm
        self._redirect.__enter__()
        return self

    def close_all(self) -> None:
        while self.open:
            self.open.pop().close()

    def finished(self, stage, stats) -> None:
        """After each stage: its bar closed, its line printed, its DVC summary written."""
        self.close_all()
        _report(stats)
        write_summary(stage)

    def __exit__(self, *exc) -> None:
        self.close_all()
        self._redirect.__exit__(*exc)


def _run_steps(names: list[str], config, store, executor=None, retry_errors: bool = False, options=None):
    """Run stages in order through the orchestrator, with a progress bar each; print and record each."""
    with _Bars() as bars:
        return run_steps(names, config, store, bars, executor, retry_errors, options, on_stage=bars.finished)


def _run(name: str, config, store, executor=None, retry_errors: bool = False, **stage_options):
    """One stage through the orchestrator; returns its stats."""
    return _run_steps([name], config, store, executor, retry_errors, {name: stage_options})[0][1]


def _report(stats) -> None:
    if stats.computed == 0:  # one wording whatever the stage counted as to-do (ingest: files seen before)
        typer.echo(f"{stats.stage:<9} [{stats.fingerprint}] up to date: nothing to compute ({stats.seconds:.2f}s)")
        return
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(stats.errors.items()))
    typer.echo(
        f"{stats.stage:<9} [{stats.fingerprint}] computed {stats.computed} row(s): {stats.ok} ok, "
        f"{stats.error} error{f' ({reasons})' if reasons else ''} in {stats.seconds:.1f}s"
    )


def _with_executor(opts: Common, config, body) -> None:
    """Run `body(executor)` and close the executor (a dask cluster) afterwards; a dask task may take
    runtime.task_timeout seconds (params.yaml)."""
    runner = make_executor(opts.executor, opts.scheduler, opts.workers, task_timeout=config.runtime.task_timeout)
    try:
        body(runner)
    finally:
        if hasattr(runner, "close"):
            runner.close()


def _stage_command(name: str, doc: str) -> None:
    @common(*RUN)
    def command(opts: Common) -> None:
        config, store = _setup(opts)
        _with_executor(opts, config, lambda runner: _run(name, config, store, runner, opts.retry_errors))

    command.__doc__ = doc
    app.command(name)(command)


@app.command()
@common(*BASIC)
def ingest(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="Folders, globs, CSV/Parquet lists or image files (default: params.yaml's inputs)."),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default: the folder or list name).")] = None,
    layout: Annotated[str, typer.Option(help="auto | cnndetection | genimage | diffusionforensics.")] = "auto",
    generator: Annotated[str | None, typer.Option(help="Set the generator of every file (e.g. progan).")] = None,
    split: Annotated[str | None, typer.Option(help="Set the split of every file (train | val | test).")] = None,
    opts: Common = Common(),
) -> None:
    """Add images to the manifest: hash each file (sha256 = image_id), check it decodes, read its
    label, generator and split from the folder layout (0_real/1_fake, GenImage's ai/nature,
    DiffusionForensics' <split>/<source>/<generator>) or a list's columns. Broken files get error rows;
    files seen before (same path, size and mtime) are skipped."""
    config, store = _setup(opts)
    inputs = inputs or _params_inputs(opts.params)
    _run("ingest", config, store, inputs=inputs, dataset=dataset, layout=layout, generator=generator, split=split)


def _params_inputs(params: Path | None) -> list[str]:
    inputs = _params(params).get("inputs") or []
    if not inputs:
        raise typer.BadParameter("give folders or lists to ingest, or list them under `inputs:` in params.yaml")
    return [str(i) for i in inputs]


def stage_commands() -> None:
    """A command for every registered per-image stage that has none yet (built-in or plugin), its help
    the stage class's docstring: adding a stage adds its command."""
    have = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name in STAGES.feature_stages():
        if name not in have:
            _stage_command(name, inspect.getdoc(STAGES.get(name)) or f"Run the {name} stage.")


stage_commands()


@app.command("run")
@common(*RUN)
def run_all(
    first: Annotated[str, typer.Option("--from", help="First stage: ingest | caption | ... | fit.")] = "caption",
    last: Annotated[str, typer.Option("--to", help="Last stage: ... | fit | evaluate.")] = "evaluate",
    opts: Common = Common(),
) -> None:
    """Run the stages from --from to --to in pipeline order, in one process (each computes only what is
    missing). The executor and --retry-errors apply to the per-image stages; --from ingest reads
    params.yaml's `inputs`."""
    names = stage_range(first, last)
    config, store = _setup(opts)
    options = {"ingest": {"inputs": _params_inputs(opts.params)}} if "ingest" in names else {}

    def body(runner) -> None:
        for stage, _ in _run_steps(names, config, store, runner, opts.retry_errors, options):
            if stage.name == "evaluate":
                _print_evaluation(stage, store)

    _with_executor(opts, config, body)


@app.command()
@common(*BASIC)
def fit(
    head: Annotated[str | None, typer.Option(help="mlp (the paper's) | lightgbm | logreg.")] = None,
    features: Annotated[str | None, typer.Option(help="both | global | local (Fig. 5 ablation).")] = None,
    w1: Annotated[float | None, typer.Option(help="Weight of D_g in D = w1*D_g + w2*D_l.")] = None,
    w2: Annotated[float | None, typer.Option(help="Weight of D_l.")] = None,
    opts: Common = Common(),
) -> None:
    """Train a head on the cached distance rows of the train split (no model stage runs), calibrate
    its temperature and threshold on the val split, and save it under models/ (safetensors + JSON, or
    LightGBM's text format). A head with the same fingerprint is reused. Options override params.yaml."""
    config, store = _setup(opts, overrides={"fit": {"head": head, "features": features, "w1": w1, "w2": w2}})
    _run("fit", config, store)


@app.command()
@common(*BASIC)
def evaluate(
    model: Annotated[
        list[str] | None,
        typer.Option(
            metavar="DIR|NAME",
            help="Head folder(s), or names under models/ (default: the head the last `item fit` ran).",
        ),
    ] = None,
    all_heads: Annotated[bool, typer.Option("--all", help="Evaluate every head under models/.")] = False,
    heads: Annotated[
        str | None,
        typer.Option(
            help="Compare methods from the cache: item,unifd,defake,cosine,cosine-local,format "
            "(default: params.yaml's evaluate.heads, if any)."
        ),
    ] = None,
    opts: Common = Common(),
) -> None:
    """Score the test split (val when there is none) with fitted heads: per generator and mean, ACC at
    0.5, AP, AUC, real/fake ACC, TPR at 1% and 5% FPR, and ACC at the calibrated threshold. Prints the
    ACC and AP tables in the paper's layout; writes every table (CSV + Markdown) and metrics.json to
    reports/."""
    config, store = _setup(opts)
    methods = [h.strip() for h in heads.split(",") if h.strip()] if heads else list(config.stage("evaluate").heads)
    if methods:
        _print_comparison(compare(methods, config, store))
    else:
        models = all_models(store) if all_heads else model
        for stage, _ in _run_steps(["evaluate"], config, store, options={"evaluate": {"models": models}}):
            _print_evaluation(stage, store)


def _print_comparison(results: list[dict[str, Any]]) -> None:
    typer.echo(format_tables(results, ("acc", "ap")))
    warning = leakage_warning(results)
    if warning:
        typer.echo(warning)


def _print_evaluation(stage, store, metrics: tuple[str, ...] = ("acc", "ap", "acc_calibrated")) -> None:
    typer.echo(format_tables(labelled_results(stage.results), metrics))
    typer.echo(f"all tables and metrics.json: {store.reports}")


@app.command()
@common("data_dir", "device", "batch_size", "verbose")
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Folders, globs, CSV/Parquet lists or image files.")],
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o", help="Output: a .csv, .json, .jsonl or .parquet file, or - (JSON lines on stdout)."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            metavar="DIR|NAME",
            help="Head folder, or its name under models/ (default: the head the last `item fit` ran, "
            "models/LATEST; `item status` names it).",
        ),
    ] = None,
    opts: Common = Common(),
) -> None:
    """Score images with a fitted head: runs whichever stages are missing for them (the cache is reused)
    with the head's own model configuration, then writes one row per input file: image_id, path,
    score = P(fake) (calibrated), decision, threshold, head, caption, objects with their image-phrase
    cosine, status and error. Broken files get a row with the reason. The summary line names the head."""
    _setup(opts, read_params=False)
    check_output(out, opts.data_dir)  # a bad --out (or one inside the store's own folders) fails before any work
    head = choose_head(Store(opts.data_dir), model)
    runtime = {"device": opts.device, "batch_size": opts.batch_size}
    with _Bars() as bars:
        local = _params(opts.params)  # only where this machine's models are: a head never names files
        rows = run_predict(
            inputs, model=head.directory, data_dir=opts.data_dir, progress=bars, runtime=runtime, params=local
        )
    write_rows(rows, out)
    n_fake = sum(r["decision"] == "fake" for r in rows)
    n_err = sum(r["status"] == "error" for r in rows)
    which = "--model" if model else "the default, models/LATEST; --model pins another"
    typer.echo(
        f"predict: {len(rows)} file(s): {n_fake} fake, {len(rows) - n_fake - n_err} real, {n_err} error -> "
        f"{'stdout' if out == '-' else out}; head {head.description} ({which})",
        err=out == "-",  # stdout carries the rows then
    )


@app.command()
@common(*BASIC)
def status(opts: Common = Common()) -> None:
    """Per stage under the current configuration: rows ok, rows in error (by reason) and manifest images
    still missing; under embed, the captions and phrases cut to CLIP's 77 tokens; other fingerprints
    present on disk are listed."""
    config, store = _setup(opts)
    typer.echo(f"data: {store.root}  profile: {config.profile}")
    typer.echo(f"{'stage':<9} {'fingerprint':<13} {'ok':>8} {'error':>8} {'missing':>8}")
    for s in stage_status(config, store):
        typer.echo(f"{s.stage:<9} {s.fingerprint:<13} {s.ok:>8} {s.error:>8} {s.missing:>8}")
        for reason, n in sorted(s.errors.items(), key=lambda kv: -kv[1]):
            typer.echo(f"{'':<23}{n:>8}  {reason}")
        if s.cut_texts is not None:
            typer.echo(f"{'':<23}{_cut_line(s.cut_texts, s.cut_unknown)}")
        if s.other_fingerprints:
            typer.echo(f"{'':<23}other configurations on disk: {', '.join(s.other_fingerprints)}")
    _print_heads(store)


def _cut_line(cut: int, unknown: int) -> str:
    """Embed's captions and phrases past CLIP's context; rows written before they were counted say nothing."""
    line = f"{cut} text(s) cut to 77 tokens"
    return f"{line} ({unknown} older row(s) not counted: unknown)" if unknown else line


def _print_heads(store: Store) -> None:
    """The default head (what predict, evaluate and report use without --model) and the others."""
    heads = all_models(store)
    if not heads:
        typer.echo("heads: none fitted yet (`item fit`)")
        return
    try:
        default = latest_model(store)
    except (FileNotFoundError, UsageError):
        default = None
    fits = [(read_json(folder / "config.json") or {}).get("fit") or {} for folder in heads]
    vary = varying(fits)
    typer.echo("heads (* the default: the head the last `item fit` ran, models/LATEST; --model pins another):")
    for folder, fit in zip(heads, fits, strict=True):
        typer.echo(f"  {'*' if folder == default else ' '} {describe(folder.name, fit, vary)}")


@app.command()
@common("verbose")
def demo(
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir", "-d", help="The demo's own data root, apart from your data (ITEM_DATA_DIR is not read)."
        ),
    ] = demo_recipe.DEFAULT_ROOT,
    n_per_class: Annotated[int, typer.Option(help="Images per class and generator.")] = 40,
    opts: Common = Common(),
) -> None:
    """Make a small synthetic image set (nothing downloaded) in a data directory of its own (data/demo;
    one holding other data is refused), run every stage on it with the tiny profile (and on the
    robustness grid of its test images), evaluate, compare with the baselines, write the HTML report,
    and score a folder of unseen images: random-weight models, so the numbers only show that the
    pipeline works. `make clean-demo` removes that folder."""
    opts = dataclasses.replace(opts, data_dir=data_dir, profile="tiny", chunk_size=64)
    config, store = _setup(opts, read_params=False)
    if not opts.verbose:  # the stages' INFO notes vary between a first and a later run; the summary lines do not
        logging.getLogger("stages").setLevel(logging.WARNING)
    demo_recipe.claim_root(store.root)
    start = time.perf_counter()
    images = demo_recipe.make_images(store.root / demo_recipe.IMAGES, n_per_class)
    typer.echo(f"demo images: {images}")
    with _Bars() as bars:
        done = demo_recipe.run_demo(config, store, images, bars, bars.finished)
    _print_evaluation(done.evaluation, store, ("acc", "ap"))
    unchanged = "" if done.fresh else " (unchanged since the last run: from reports/)"
    typer.echo(f"comparison with baselines trained on the same cache{unchanged}:")
    _print_comparison(done.comparison)
    typer.echo(f"robustness grid: {done.derived} derived images; report: {done.report}")
    typer.echo(f"predict on {len(done.predictions)} unseen file(s) in {done.unseen} -> {done.predictions_file}")
    for r in done.predictions:
        score = "-" if r["score"] is None else f"{r['score']:.3f}"
        typer.echo(
            f"  {Path(r['path']).name:<16} {r['decision'] or r['status']:<6} score {score:<6} "
            f"{r['error'] or (r['caption'] or '')[:40]}"
        )
    typer.echo("(tiny profile: random-weight models; these numbers only show that the pipeline runs end to end)")
    typer.echo(f"demo finished in {time.perf_counter() - start:.1f}s: {_computed(done.computed)}")


def _computed(rows: int) -> str:
    return "nothing recomputed: every stage was up to date" if rows == 0 else f"{rows} row(s) computed"


def DatasetPaths(help: str) -> Any:  # noqa: N802 (used as a type annotation)
    """A repeatable dataset option of `item reproduce`: folders, zips or tars."""
    return Annotated[list[str] | None, typer.Option(help=help, metavar="PATH", show_default=False)]


@app.command("reproduce")
@common(*RUN)
def reproduce_tables(
    cnndetection: DatasetPaths(
        "CNNDetection: a folder or zip/tar holding train/ (ProGAN <class>/0_real|1_fake: the training "
        "subset), val/ (calibration) and test/<generator>/ (Tables I-II). Repeat it for separate trees."
    ) = None,
    ufd: DatasetPaths(
        "UniversalFakeDetect's diffusion_datasets: guided, ldm_*, glide_*, dalle (1_fake) with laion/ "
        "and imagenet/ (0_real) (Tables I-II)."
    ) = None,
    diffusionforensics: DatasetPaths(
        "DiffusionForensics images: test/<source>/<generator>, reals in <source>/real (Table III)."
    ) = None,
    genimage: DatasetPaths("GenImage: <generator>/.../val/{ai,nature} (Table III: ADM, Glide, VQDM).") = None,
    train_count: Annotated[int, typer.Option(help="ProGAN training images per class (real, fake).")] = 40_000,
    val_count: Annotated[int, typer.Option(help="ProGAN validation images per class (calibration only).")] = 1_000,
    seed: Annotated[int, typer.Option(help="Seed of the training and validation subsets.")] = 0,
    deepfakes: Annotated[
        str,
        typer.Option(
            help="Table I's Deepfakes column: faceforensics (CNNDetection's test/deepfake, as the rows the "
            "paper compares with) | whichfaceisreal (test/whichfaceisreal, the paper's footnote)."
        ),
    ] = "faceforensics",
    opts: Common = Common(),
) -> None:
    """Reproduce the paper's Tables I-III: train ITEM on a seeded ProGAN subset of CNNDetection (40,000 real
    + 40,000 fake by default), test per generator on the datasets given, and print each table with the
    paper's ITEM row and the difference (also reports/reproduce.{md,json}). Every stage is cached: a re-run
    computes nothing. Datasets not given leave their columns "-"."""
    protocol = Protocol(train_count=train_count, val_count=val_count, seed=seed, deepfakes=deepfakes)
    config, store = _setup(opts)
    roots = {"cnndetection": cnndetection, "ufd": ufd, "diffusionforensics": diffusionforensics, "genimage": genimage}

    def body(runner) -> None:
        with _Bars() as bars:
            done = reproduce(roots, config, store, protocol, bars, runner, opts.retry_errors, bars.finished)
        typer.echo(done.markdown)
        typer.echo(f"{_computed(done.computed)}; tables in {', '.join(str(p) for p in done.paths)}")

    _with_executor(opts, config, body)


@app.command()
@common(*BASIC)
def perturb(
    kinds: Annotated[
        str,
        typer.Option(
            help="Comma-separated: noise, blur, jpeg (the paper's grid), noise_var (the noise levels read as "
            "variances)."
        ),
    ] = "noise,blur,jpeg",
    split: Annotated[str, typer.Option(help="Which split's images to perturb.")] = "test",
    seed: Annotated[int, typer.Option(help="Seed of the Gaussian noise.")] = 0,
    generators: Annotated[
        str | None,
        typer.Option(
            metavar="LIST",
            help="Comma-separated generators whose images to perturb (the paper: progan); default: every one.",
        ),
    ] = None,
    opts: Common = Common(),
) -> None:
    """Make the paper's robustness grid (Fig. 4): Gaussian noise sigma 0.001/0.005/0.01, Gaussian blur
    sigma 1/2/3 and JPEG quality 75/50/25 copies of a split's images (real and fake alike; of --generators
    only, when given), and ingest
    them as new images with source_id and perturbation. Run the stages (`item run`) and then `item
    report` (or `item robustness`) to score them."""
    config, store = _setup(opts)
    options = {"kinds": _names(kinds), "split": split, "seed": seed, "generators": _names(generators or "")}
    job = _run_steps(["perturb"], config, store, options={"perturb": options})[0][0]
    typer.echo(f"perturb: {len(job.sources)} derived image(s) under {job.out}")
    _run("ingest", config, store, sources=job.sources)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated option's names, blanks left out."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


@app.command()
@common(*BASIC)
def robustness(opts: Common = Common()) -> None:
    """AP and ACC of the latest head on every perturbation and level (after `item perturb` and `item run`),
    next to the same images clean; writes reports/robustness.json and reports/figures/robustness.png."""
    from pipeline.app import plots

    config, store = _setup(opts)
    result = _run_steps(["robustness"], config, store)[0][0].result
    if result is None:
        raise typer.BadParameter("no scored derived images: run `item perturb`, then `item run --to distance`")
    clean = result["clean"] or {}
    typer.echo(f"clean: AP {100 * (clean.get('ap') or 0):.2f}  ACC {100 * (clean.get('acc') or 0):.2f}")
    for kind, points in result["grid"].items():
        cells = "  ".join(f"{lvl:g}: AP {100 * (m['ap'] or 0):.2f} ACC {100 * m['acc']:.2f}" for lvl, m in points)
        typer.echo(f"{kind:<6} {cells}")
    lines = {k: [(lvl, m["ap"] or 0.0) for lvl, m in pts] for k, pts in result["grid"].items()}
    plots.robustness_lines(lines, clean.get("ap") or 0.0, store.reports / "figures" / "robustness.png")


@app.command()
@common(*BASIC)
def report(
    sample: Annotated[int, typer.Option(help="Test images explained (half most-real, half most-fake).")] = 12,
    opts: Common = Common(),
) -> None:
    """Write reports/report.html: one self-contained page with the evaluation tables, the baseline
    comparison and robustness grid (when computed), PR/ROC curves, per-generator bars, t-SNE of D, the
    format-bias check, and per-image explanations (thumbnail with boxes, caption, per-object cosine)."""
    from pipeline.app.report import build

    config, store = _setup(opts)
    typer.echo(f"report: {build(config, store, sample)}")


@app.command()
@common("data_dir", "verbose")
def check(
    quarantine: Annotated[bool, typer.Option(help="Move unreadable or foreign part files to quarantine/.")] = False,
    opts: Common = Common(),
) -> None:
    """Read every part file under the data directory; report (or quarantine) the ones that are not
    readable Parquet with an image_id and status column."""
    _setup(opts, read_params=False)
    bad = check_parts(opts.data_dir, quarantine=quarantine)
    for path, reason in bad:
        typer.echo(f"{'quarantined' if quarantine else 'bad'}: {path}: {reason}")
    where = f", moved to {opts.data_dir / 'quarantine'}" if bad and quarantine else ""
    typer.echo(f"check: {len(bad)} bad part file(s){where}")
    if bad and not quarantine:
        raise typer.Exit(1)


@app.command()
@common("verbose")
def bench(
    only: Annotated[
        str | None, typer.Option(help="One group: embed | fit | cached | cpu | s3 | ingest | million.")
    ] = None,
    rows: Annotated[int, typer.Option(help="Cached rows for the fit benchmark.")] = 80_000,
    record: Annotated[bool, typer.Option(help="Append the figures to BENCHMARKS.md.")] = True,
    opts: Common = Common(),
) -> None:
    """Measure the speed figures (embed efficiency vs the bare model, no-op re-run over 100,000 cached
    images, head fits on 80,000 rows, distance memory at 10k vs 100k) and print each with its target.

    The harness lives in a checkout's benchmarks/ folder, beside the package (`make bench`)."""
    try:
        from benchmarks import bench as harness
    except ModuleNotFoundError as e:
        if e.name != "benchmarks":
            raise
        raise UsageError("item bench runs the benchmarks/ folder of a checkout: run it there (`make bench`)") from None
    options = [*(["--only", only] if only else []), "--rows", str(rows)]
    harness.main([*options, *([] if record else ["--no-record"]), *(["-v"] if opts.verbose else [])])


# typer's own usage errors (an unknown option, a missing argument, a bad value): the base class of its
# BadParameter, found by name so that a vendored or a plain click both work.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
METAVARS = {"path": "PATH", "integer": "INT", "float": "FLOAT", "text": "TEXT"}


def plain_metavars(command) -> None:
    """Help placeholders in words (`--out TEXT`, `INPUTS...`), not Python types (`<str>`, `<list[Path]>`);
    flags get none."""
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)
    for param in command.params:
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument":
            word = _type_word(param) + ("..." if param.nargs != 1 else "")
            param.metavar = param.name.upper()  # the usage line adds its own "..."
            param.display_type_rich = lambda ctx, word=word: word  # the type column: PATH, not <list[Path]>
        else:
            param.metavar = _type_word(param)
    made = command.get_help_option  # --help is made when help is shown: a flag, no placeholder

    def help_option(ctx, made=made):
        option = made(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = help_option


def _type_word(param) -> str:
    desc = getattr(param, "type_descriptor", None)  # typer's own parameters
    if desc is not None:
        bare = param.bare_type().removeprefix("list[").removesuffix("]")  # a list's element
        if desc.is_path or bare == "Path":
            return "PATH"
        name = {"str": "text", "int": "integer", "float": "float"}.get(bare, bare)
    else:
        name = param.type.name
    return METAVARS.get(name, name.upper())


def main() -> None:
    # What a user can act on is one line (with -v, its traceback too); any other exception is a bug
    # and keeps its traceback.
    try:
        load_plugins()  # stages of other packages register themselves, and get their commands
        stage_commands()
        command = typer.main.get_command(app)
        plain_metavars(command)
        code = command.main(standalone_mode=False)
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `item` alone: the help
            typer.echo(e.format_message())
            raise SystemExit(0) from None
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {e.format_message()}{hint}", err=True)
        raise SystemExit(2 if e.exit_code == 2 else e.exit_code) from None
    except typer.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(1) from None
    except (
        UsageError,
        UnknownNameError,
        StoreError,
        LockedError,
        SystemicError,
        IncompleteRunError,
        WorkerMismatchError,
        FileNotFoundError,
    ) as e:
        log.debug("failed", exc_info=True)
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
