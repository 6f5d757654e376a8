"""`item reproduce`: the paper's protocol on the user's copies of its datasets, as Tables I-III.

Train: a seeded subset of CNNDetection's ProGAN training images (40,000 real + 40,000 fake, as in
the paper), calibrated on a seeded subset of its val/ folder. Test, per generator, at ACC with the
fixed 0.5 threshold and AP:

- Table I (ACC) and Table II (AP): CNNDetection's test set (8 GANs and Deepfakes) and
  UniversalFakeDetect's `diffusion_datasets` (ADM, LDM, Glide, DALLE);
- Table III (ACC/AP): GenImage's val split (ADM, Glide, VQDM) and DiffusionForensics' test split
  (SD-v1, SD-v2, LDM, DALLE-2, Midjourney and four GANs), the paper's choice where the two overlap.

Nothing here computes a feature: the images go through ingest (with their dataset, generator and
split set here), the feature stages, fit and evaluate, so every result is cached and a re-run
computes nothing. What this module adds is the mapping from folders to the paper's columns and
the tables with the paper's ITEM row beside ours.

Manifest rows keep the dataset, generator and split an image was first ingested with. The
training subset is therefore checked against what the data directory already holds: another
subset there (an earlier run with other counts or seed) or the same images ingested under another
dataset is an error that names the fix (a fresh --data-dir), never a silently different protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl

from pipeline.app.runner import make_stage, run
from pipeline.engine import locations
from pipeline.engine.config import PipelineConfig
from pipeline.engine.errors import UsageError
from pipeline.engine.executors import Executor
from pipeline.engine.keys import image_id_of_bytes
from pipeline.engine.progress import Progress
from pipeline.engine.sources import Source, discover
from pipeline.engine.stage import STAGES, RunStats, Stage
from pipeline.engine.store import Store, write_json
from pipeline.method.metrics import MIN_PER_CLASS, too_few

log = logging.getLogger(__name__)

# --- the paper's tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One generator column of the paper: where its images are and the paper's ITEM figures (%)."""

    label: str  # the header as the paper prints it
    dataset: str  # the DATASETS key of the option that holds it
    folders: tuple[str, ...]  # folder names that hold its images (compared by `canonical`)
    acc: float
    ap: float


@dataclass(frozen=True)
class PaperTable:
    """A table of the paper: its columns, the metrics of each cell and the paper's mean column."""

    key: str  # I, II, III
    title: str
    metrics: tuple[str, ...]  # ("acc",), ("ap",) or ("acc", "ap") for Table III's ACC/AP cells
    columns: tuple[Column, ...]
    mean: tuple[float, ...]  # the paper's mean column, one value per metric
    mean_label: str = "Avg."


@dataclass(frozen=True)
class Dataset:
    """A benchmark the user points at with one option."""

    option: str
    title: str


DATASETS = {
    "cnndetection": Dataset("--cnndetection", "CNNDetection"),
    "ufd": Dataset("--ufd", "UniversalFakeDetect's diffusion sets"),
    "diffusionforensics": Dataset("--diffusionforensics", "DiffusionForensics"),
    "genimage": Dataset("--genimage", "GenImage"),
}

# Tables I and II share their columns (ITEM row: ACC in Table I, AP in Table II). "Deepfakes" is
# CNNDetection's `deepfake` test folder (FaceForensics++), the column of that name in the works the
# paper follows [12], [15]; the paper's footnote names whichfaceisreal.com, which is not in the table.
# UniversalFakeDetect's `guided` folder is ADM (guided diffusion).
CNN_UFD_COLUMNS = (
    Column("Pro-GAN", "cnndetection", ("progan",), 99.92, 100.0),
    Column("Cycle-GAN", "cnndetection", ("cyclegan",), 93.06, 99.88),
    Column("Big-GAN", "cnndetection", ("biggan",), 95.78, 99.38),
    Column("Style-GAN", "cnndetection", ("stylegan",), 92.49, 99.27),
    Column("Style-GAN2", "cnndetection", ("stylegan2",), 85.25, 99.19),
    Column("Gau-GAN", "cnndetection", ("gaugan",), 93.79, 99.95),
    Column("Star-GAN", "cnndetection", ("stargan",), 97.86, 99.96),
    Column("Deepfakes", "cnndetection", ("deepfake", "deepfakes"), 86.56, 97.93),
    Column("ADM", "ufd", ("guided", "adm"), 79.51, 87.27),
    Column("LDM 200 steps", "ufd", ("ldm_200",), 94.17, 97.87),
    Column("LDM 200 w/ CFG", "ufd", ("ldm_200_cfg",), 82.25, 91.56),
    Column("LDM 100 steps", "ufd", ("ldm_100",), 94.03, 98.06),
    Column("Glide 100 & 27", "ufd", ("glide_100_27",), 87.29, 94.75),
    Column("Glide 50 & 27", "ufd", ("glide_50_27",), 90.28, 96.58),
    Column("Glide 100 & 10", "ufd", ("glide_100_10",), 89.40, 95.57),
    Column("DALLE", "ufd", ("dalle",), 92.82, 95.59),
)
# Table III: "we choose ADM, Glide, and VQDM from GenImage, and [the rest] from DiffusionForensics".
MORE_COLUMNS = (
    Column("ADM", "genimage", ("adm", "imagenet_ai_0508_adm"), 87.24, 93.00),
    Column("Glide", "genimage", ("glide", "imagenet_glide"), 79.11, 90.59),
    Column("VQDM", "genimage", ("vqdm", "imagenet_ai_0419_vqdm"), 86.93, 93.87),
    Column("SD-v1", "diffusionforensics", ("sdv1", "sdv1_new", "sd_v1", "sdv1_4"), 80.52, 94.11),
    Column("SD-v2", "diffusionforensics", ("sdv2", "sd_v2", "sdv2_1"), 77.86, 89.90),
    Column("LDM", "diffusionforensics", ("ldm",), 89.79, 97.58),
    Column("DALLE-2", "diffusionforensics", ("dalle2", "dalle_2"), 91.19, 98.82),
    Column("Mid.", "diffusionforensics", ("midjourney", "mj"), 89.75, 98.08),
    Column("Proj-GAN", "diffusionforensics", ("projectedgan", "projgan"), 92.29, 97.99),
    Column("StyleGAN", "diffusionforensics", ("stylegan",), 89.01, 96.55),
    Column("Diff-ProjGAN", "diffusionforensics", ("diff-projectedgan", "diffusion-projectedgan"), 88.13, 96.03),
    Column("Diff-StyleGAN", "diffusionforensics", ("diff-stylegan", "diffusion-stylegan"), 95.52, 99.34),
)
TABLES = (
    PaperTable(
        "I", "ACC (%) on CNNDetection and UniversalFakeDetect's diffusion sets", ("acc",), CNN_UFD_COLUMNS, (90.90,)
    ),
    PaperTable(
        "II",
        "AP (%) on CNNDetection and UniversalFakeDetect's diffusion sets",
        ("ap",),
        CNN_UFD_COLUMNS,
        (97.05,),
        "mAP",
    ),
    PaperTable("III", "ACC/AP (%) on GenImage and DiffusionForensics", ("acc", "ap"), MORE_COLUMNS, (87.29, 95.49)),
)
PAPER_TRAIN_COUNT = 40_000  # "a subset that contains 4,0000 fake and real images, respectively"

# --- where each file belongs ---------------------------------------------------------------------

TRAIN_DATASET = "cnndetection-train"  # the manifest dataset of the ProGAN training and validation images
TRAIN_GENERATOR = "progan"
SPLIT_MARKERS = {
    "train": "train",
    "progan_train": "train",
    "val": "val",
    "progan_val": "val",
    "test": "test",
    "cnn_synth_testset": "test",
}
LABEL_DIRS = {"0_real": 0, "1_fake": 1}
GENIMAGE_LABELS = {"nature": 0, "ai": 1}
UFD_REALS = {"laion": "laion", "imagenet": "imagenet"}  # folders of UniversalFakeDetect's real images
UFD_REAL_OF = {"guided": "imagenet"}  # ADM's images pair with ImageNet reals, the others with LAION's
DF_PREFERRED_SOURCE = "lsun_bedroom"  # DiffusionForensics' source with every generator of Table III
DF_DERIVED = {"dire", "recons"}  # DiffusionForensics also ships DIRE maps and reconstructions: not images


def canonical(name: str) -> str:
    """A folder name compared without case or punctuation (`ldm_200_cfg` = `LDM-200-CFG`)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class Placement:
    """What a file is in the protocol."""

    split: str  # train | val (the ProGAN subset pools) | test
    generator: str  # the manifest generator, named so that evaluation pairs fakes with their reals
    label: int
    column: str | None = None  # the paper's column label (test fakes; None for reals and training)
    key: str = ""  # the file's path from its split folder on: what the seeded subset is drawn by


def _columns_of(dataset: str) -> dict[str, Column]:
    """Canonical folder name -> column, for one dataset."""
    columns = CNN_UFD_COLUMNS if dataset in ("cnndetection", "ufd") else MORE_COLUMNS
    return {canonical(f): c for c in columns if c.dataset == dataset for f in c.folders}


def _first_column(parts: Iterable[str], dataset: str) -> tuple[str, Column] | None:
    known = _columns_of(dataset)
    return next(((p, known[canonical(p)]) for p in parts if canonical(p) in known), None)


def place_cnndetection(parts: tuple[str, ...]) -> Placement | None:
    """`train|val/[progan/]<class>/0_real|1_fake` are ProGAN pools; `test/<generator>/[<class>/]...` (or a
    tree with no split folder: CNN_synth_testset) are test images of a table's generator."""
    label = next((LABEL_DIRS[p] for p in parts if p in LABEL_DIRS), None)
    if label is None:
        return None
    at = next((i for i, p in enumerate(parts) if p.lower() in SPLIT_MARKERS), None)
    split = SPLIT_MARKERS[parts[at].lower()] if at is not None else "test"
    rest = parts[at + 1 :] if at is not None else parts
    if split != "test":  # CNNDetection's training and validation sets are all ProGAN
        # The key leaves out a `progan` level (UniversalFakeDetect's copy has train/progan/<class>).
        key = "/".join((split, *(p for p in rest if p.lower() != TRAIN_GENERATOR)))
        return Placement(split, TRAIN_GENERATOR, label, key=key)
    found = _first_column(rest, "cnndetection")
    if found is None:
        return None  # crn, imle, san, seeingdark, whichfaceisreal: not in the paper's tables
    column = found[1]
    return Placement("test", f"cnndetection/{column.folders[0]}", label, column.label if label else None)


def place_ufd(parts: tuple[str, ...]) -> Placement | None:
    """`diffusion_datasets/<generator>/1_fake`, reals in `laion/0_real` and `imagenet/0_real`. Generators
    are named `ufd/<real source>/<generator>` so that evaluation pairs each with its reals."""
    label = next((LABEL_DIRS[p] for p in parts if p in LABEL_DIRS), None)
    if label is None:
        return None
    reals = next((UFD_REALS[canonical(p)] for p in parts if canonical(p) in UFD_REALS), None)
    if reals is not None and label == 0:
        return Placement("test", f"ufd/{reals}/real", 0)
    found = _first_column(parts, "ufd")
    if found is None:
        return None
    name = found[1].folders[0]
    source = UFD_REAL_OF.get(name, "laion")
    return Placement("test", f"ufd/{source}/{name}", label, found[1].label if label == 1 else None)


def place_genimage(parts: tuple[str, ...]) -> Placement | None:
    """`<generator>/<subset>/val/{ai,nature}`: the val split is GenImage's test set; train is skipped."""
    label = next((GENIMAGE_LABELS[p] for p in parts if p in GENIMAGE_LABELS), None)
    if label is None or "train" in parts:
        return None
    found = _first_column(parts, "genimage")
    if found is None:
        return None
    column = found[1]
    return Placement("test", f"genimage/{column.folders[0]}", label, column.label if label == 1 else None)


def place_diffusionforensics(parts: tuple[str, ...]) -> Placement | None:
    """`[images/]test/<source>/<generator>/*`, reals in `<source>/real`; DIRE maps and reconstructions
    and the train/val splits are skipped."""
    at = next((i for i, p in enumerate(parts) if p == "test"), None)
    if at is None or len(parts) < at + 3 or any(canonical(p) in DF_DERIVED for p in parts[:at]):
        return None
    source, folder = parts[at + 1], parts[at + 2]
    if folder == "real":
        return Placement("test", f"diffusionforensics/{source}/real", 0)
    found = _first_column((folder,), "diffusionforensics")
    if found is None:
        return None
    return Placement("test", f"diffusionforensics/{source}/{folder}", 1, found[1].label)


PLACERS: dict[str, Callable[[tuple[str, ...]], Placement | None]] = {
    "cnndetection": place_cnndetection,
    "ufd": place_ufd,
    "diffusionforensics": place_diffusionforensics,
    "genimage": place_genimage,
}


def _root_text(root: str | Path) -> str:
    """The root as discovery names the files under it (resolved; URLs as given)."""
    text = str(root)
    return text.rstrip("/") if locations.is_url(text) else str(Path(text).resolve())


def relative_parts(location: str, root: str) -> tuple[str, ...]:
    """The folders and file name of `location` below `root`, preceded by the root's own name (a
    root named `test` or `progan_train.zip` is itself the split folder). Archive members count."""
    outer, inner = locations.split(location)
    below = PurePosixPath(outer[len(root) :].lstrip("/")).parts if outer.startswith(root) else ()
    inside = PurePosixPath(inner).parts if inner else ()
    name = PurePosixPath(root).name.split(".")[0]  # progan_train.zip -> progan_train
    return (name, *below, *inside)


def placed(dataset: str, root: str | Path) -> Iterator[tuple[Source, Placement]]:
    """Every file under `root` (a folder, zip or tar) that belongs to the protocol, with its place."""
    text = _root_text(root)
    if not locations.is_url(text) and not Path(text).exists():
        raise UsageError(f"{DATASETS[dataset].option} {root}: no such folder or archive")
    place = PLACERS[dataset]
    skipped = 0
    for source in discover([text], dataset=dataset, layout="cnndetection"):
        parts = relative_parts(source.path, text)
        where = place(parts[:-1])
        if where is None:
            skipped += 1
            continue
        yield source, dataclasses.replace(where, key="/".join((where.key, parts[-1])) if where.key else "")
    if skipped:
        log.info("reproduce: %s %s: %d file(s) belong to no table of the paper: skipped", dataset, root, skipped)


# --- the seeded subset ---------------------------------------------------------------------------


class Smallest:
    """The `n` items of smallest key seen so far, in one pass and bounded memory: a seeded sample of a
    pool (ProGAN's 720,000 training files) that does not depend on the order files are listed in."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self._heap: list[tuple[int, int, Any]] = []
        self._tie = itertools.count()

    def add(self, key: int, item: Any) -> None:
        self.seen += 1
        if self.n <= 0:
            return
        entry = (-key, next(self._tie), item)  # a max-heap of the n smallest keys
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif entry[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[Any]:
        return [item for _, _, item in sorted(self._heap, key=lambda e: -e[0])]


def sample_key(seed: int, key: str) -> int:
    """The file's rank in the seeded order: a hash of the seed and its path from the split folder on,
    so the subset is the same wherever the dataset lies, from a folder or an archive."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


# --- the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """The options of a reproduction."""

    train_count: int = PAPER_TRAIN_COUNT  # ProGAN training images per class (real, fake)
    val_count: int = 1_000  # validation images per class, from CNNDetection's val/ (calibration only)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_count < 1:
            raise UsageError(f"--train-count must be at least 1, got {self.train_count}")
        if self.val_count < 0:
            raise UsageError(f"--val-count must be 0 or more, got {self.val_count}")


@dataclass
class Plan:
    """The files to ingest, each with its dataset, generator, split and label, and the column map."""

    sources: list[Source] = field(default_factory=list)
    given: dict[str, list[str]] = field(default_factory=dict)  # dataset -> the roots given
    columns: dict[tuple[str, str], str] = field(default_factory=dict)  # (dataset, column) -> generator
    counts: dict[str, int] = field(default_factory=dict)  # train_real, train_fake, val_real, ... pool_real, ...
    subset: str = ""  # a digest of the subset's files (paths from their split folder on): the same anywhere

    def of_split(self, *splits: str) -> list[Source]:
        return [s for s in self.sources if s.split in splits]


def make_plan(roots: dict[str, list[str | Path]], protocol: Protocol) -> Plan:
    """Walk the given roots once: the seeded ProGAN subsets, and the test images of the tables' columns."""
    # The same root given twice is walked once (its files would count twice in the pools).
    given = {name: list(dict.fromkeys(_root_text(r) for r in paths)) for name, paths in roots.items() if paths}
    unknown = sorted(set(given) - set(DATASETS))
    if unknown:
        raise UsageError(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    if "cnndetection" not in given:
        raise UsageError("--cnndetection is needed: the paper trains on its ProGAN images (train/ and val/)")
    plan = Plan(given=given)
    pools = {
        (split, label): Smallest(protocol.train_count if split == "train" else protocol.val_count)
        for split in ("train", "val")
        for label in (0, 1)
    }
    tests: list[tuple[Source, Placement]] = []
    for dataset, paths in given.items():
        for root in paths:
            for source, where in placed(dataset, root):
                if where.split == "test":
                    tests.append((_assigned(source, dataset, where), where))
                else:
                    pools[where.split, where.label].add(sample_key(protocol.seed, where.key), (source, where))
    keys = []
    for (split, label), pool in pools.items():
        kind = "real" if label == 0 else "fake"
        drawn = pool.items()
        plan.counts[f"{split}_{kind}"], plan.counts[f"{split}_pool_{kind}"] = len(drawn), pool.seen
        plan.sources += [_assigned(s, TRAIN_DATASET, w) for s, w in drawn]
        keys += [w.key for _, w in drawn]
    plan.subset = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    _check_pools(plan, protocol)
    _add_tests(plan, tests)
    return plan


def _assigned(source: Source, dataset: str, where: Placement) -> Source:
    return dataclasses.replace(source, dataset=dataset, generator=where.generator, split=where.split, label=where.label)


def _check_pools(plan: Plan, protocol: Protocol) -> None:
    roots = ", ".join(plan.given["cnndetection"])
    if min(plan.counts["train_real"], plan.counts["train_fake"]) == 0:
        raise UsageError(
            f"--cnndetection {roots}: no ProGAN training images (a train/ or progan_train/ folder holding "
            "<class>/0_real and <class>/1_fake)"
        )
    for kind in ("real", "fake"):
        if plan.counts[f"train_{kind}"] < protocol.train_count:
            log.warning(
                "reproduce: only %d %s ProGAN training image(s) under %s, fewer than --train-count %d: using all",
                plan.counts[f"train_{kind}"],
                kind,
                roots,
                protocol.train_count,
            )
    if protocol.val_count and min(plan.counts["val_real"], plan.counts["val_fake"]) == 0:
        log.warning("reproduce: no ProGAN validation images (val/ folder) under %s: the head is not calibrated", roots)


def _add_tests(plan: Plan, tests: list[tuple[Source, Placement]]) -> None:
    """The test images, one generator per column (DiffusionForensics: the preferred source's) and the
    reals those generators pair with."""
    by_column: dict[tuple[str, str], set[str]] = {}
    for source, where in tests:
        if where.column is not None:
            by_column.setdefault((source.dataset, where.column), set()).add(where.generator)
    for key, generators in by_column.items():
        chosen = plan.columns[key] = min(generators, key=_source_preference)
        if len(generators) > 1:
            log.info("reproduce: %s column %s: %s (not %s)", *key, chosen, ", ".join(sorted(generators - {chosen})))
    chosen = set(plan.columns.values())
    paired = {g.rsplit("/", 1)[0] + "/real" for g in chosen}
    plan.sources += [s for s, where in tests if where.generator in chosen or where.generator in paired]


def _source_preference(generator: str) -> tuple[int, str]:
    # DiffusionForensics keeps a generator per source (lsun_bedroom/adm, imagenet/adm): one per column.
    return (0 if f"/{DF_PREFERRED_SOURCE}/" in generator else 1, generator)


# --- the data directory's manifest against the plan ------------------------------------------------


HASH_BATCH = 256  # files read at once when hashing the subset before ingest


def subset_ids(plan: Plan, store: Store) -> dict[str, str]:
    """path -> image_id of the subset's files before ingest: as ingested before, and, when the data
    directory already holds a subset, the others hashed here (a dataset moved elsewhere is the same)."""
    known = store.sources.read(["path", "image_id"])
    ids = dict(zip(known.column("path").to_pylist(), known.column("image_id").to_pylist(), strict=True))
    held = store.manifest.read(["dataset"]).column("dataset").to_pylist()
    if TRAIN_DATASET not in held:
        return ids  # nothing to compare with: whatever is new is hashed once, by ingest
    unknown = [s.path for s in plan.of_split("train", "val") if s.path not in ids]
    for start in range(0, len(unknown), HASH_BATCH):
        batch = unknown[start : start + HASH_BATCH]
        for path, data in zip(batch, locations.read_many(batch), strict=True):
            if isinstance(data, bytes):  # an unreadable file gets its error row from ingest
                ids[path] = image_id_of_bytes(data)
    return ids


@dataclass
class SubsetCheck:
    """The training subset against the manifest (fit trains on the manifest's rows of TRAIN_DATASET)."""

    stale: int = 0  # rows of TRAIN_DATASET outside this subset: another subset is there
    foreign: Counter = field(default_factory=Counter)  # "dataset (split)" -> images of the subset held there
    shared: Counter = field(default_factory=Counter)  # ... held as test images of the benchmarks (same bytes)


def check_subset(plan: Plan, store: Store, ids: dict[str, str]) -> SubsetCheck:
    """Compare the planned subset (`ids`: path -> image_id) with what the manifest holds."""
    manifest = pl.from_arrow(store.manifest.read(["image_id", "dataset", "split"]))
    planned: dict[str, str] = {}
    for s in plan.of_split("train", "val"):
        if s.path in ids:
            planned.setdefault(ids[s.path], s.split)  # the same bytes twice: ingest keeps the first
    check = SubsetCheck()
    check.stale = manifest.filter(
        (pl.col("dataset") == TRAIN_DATASET) & ~pl.col("image_id").is_in(list(planned))
    ).height
    held = manifest.filter(pl.col("image_id").is_in(list(planned))).select("image_id", "dataset", "split")
    for image_id, dataset, split in held.iter_rows():
        if (dataset, split) != (TRAIN_DATASET, planned[image_id]):
            (check.shared if dataset in DATASETS else check.foreign)[f"{dataset} ({split})"] += 1
    return check


def refuse_other_subsets(check: SubsetCheck, store: Store) -> None:
    """Refuse a data directory whose manifest holds another ProGAN subset, or this subset's images under a
    dataset of another command: the manifest keeps each image's first dataset and split, so fit would
    train on other images than the protocol says."""
    if check.stale:
        raise UsageError(
            f"{store.root} already holds another ProGAN training subset ({check.stale} image(s) not in this "
            "one: an earlier `item reproduce` with another --train-count, --val-count or --seed). The manifest "
            "keeps each image's first split, so give this protocol a fresh --data-dir (or the earlier options)"
        )
    if check.foreign:
        where = ", ".join(f"{n} in {w}" for w, n in check.foreign.most_common(3))
        raise UsageError(
            f"{sum(check.foreign.values())} image(s) of the ProGAN training subset are already in {store.root}'s "
            f"manifest as {where} (ingested before by another command). The manifest keeps each image's first "
            "dataset and split, so give `item reproduce` a fresh --data-dir"
        )


def lost_test_images(plan: Plan, store: Store, ids: dict[str, str]) -> dict[str, int]:
    """Test images the manifest holds under another generator (the same bytes ingested before, or twice
    within the benchmarks): per intended generator, how many its column lacks."""
    tests = [(ids[s.path], s.generator) for s in plan.of_split("test") if s.path in ids]
    rows = store.manifest.read(["image_id", "generator", "split"], ids={i for i, _ in tests})
    held = {i: (g, s) for i, g, s in zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True)}
    lost = Counter(generator for i, generator in tests if held.get(i, (generator, "test")) != (generator, "test"))
    for generator, n in sorted(lost.items()):
        log.warning(
            "reproduce: %d test image(s) of %s are in the manifest under another generator or split "
            "(the same bytes were ingested before): left out of its column",
            n,
            generator,
        )
    return dict(lost)


# --- running it ------------------------------------------------------------------------------------


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


StageDone = Callable[[Stage, RunStats], None]


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
    protocol: Protocol = Protocol(),
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
    plan = make_plan(roots, protocol)
    config = protocol_config(config)
    # Checked before ingest (a refused run leaves the manifest as it was), and after, with every id.
    refuse_other_subsets(check_subset(plan, store, subset_ids(plan, store)), store)
    done: list[RunStats] = []

    def step(name: str, ids: set[str] | None = None, **options: Any) -> Stage:
        stage = make_stage(name, config, store, **options)
        stats = run(stage, progress(name) if progress else None, executor, retry_errors, ids)
        done.append(stats)
        if on_stage is not None:
            on_stage(stage, stats)
        return stage

    ids, held_elsewhere = _ingest(plan, store, step)
    for name in STAGES.feature_stages():
        step(name, ids=set(ids.values()))  # this protocol's images only, not whatever else the store holds
    head = step("fit").model_dir
    evaluation = None
    if plan.columns:
        evaluation = step("evaluate", models=[head]).result
    result = build_result(plan, protocol, config, head, evaluation, held_elsewhere)
    markdown = render(result)
    paths = write_reports(store, result, markdown)
    return Reproduction(markdown, result, paths, sum(s.computed for s in done))


def _ingest(plan: Plan, store: Store, step: Callable[..., Stage]) -> tuple[dict[str, str], dict[str, Any]]:
    """Ingest the plan's files; their image ids (path -> id), and what the manifest holds elsewhere (the
    same bytes ingested first as something else): per generator, test images out of their column, and
    per place, subset images out of training."""
    ingest = step("ingest", sources=plan.sources)
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
    """The three tables as data: per column our figures, the paper's and the difference."""
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
    tables = [_table_result(t, plan, groups) for t in TABLES]
    return {"protocol": protocol_info, "tables": tables}


def _table_result(table: PaperTable, plan: Plan, groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    columns = [_cell(table, c, plan, groups) for c in table.columns]
    return {
        "table": table.key,
        "title": table.title,
        "metrics": list(table.metrics),
        "columns": columns,
        "mean": _mean(table, columns),
        "mean_label": table.mean_label,
    }


def _cell(table: PaperTable, column: Column, plan: Plan, groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    generator = plan.columns.get((column.dataset, column.label))
    group = groups.get(generator) if generator else None
    paper = {m: getattr(column, m) for m in table.metrics}
    ours = {m: _percent(group, m) for m in table.metrics}
    cell = {
        "column": column.label,
        "dataset": column.dataset,
        "generator": generator,
        "ours": ours,
        "paper": paper,
        "delta": {m: None if ours[m] is None else round(ours[m] - paper[m], 2) for m in table.metrics},
        "few": bool(group is not None and too_few(group)),
        "missing": None if group is not None else _why_missing(column, plan, generator),
    }
    if group is not None:
        cell.update({k: group.get(k) for k in ("n", "n_real", "n_fake")})
        for k in ("acc_ci95", "ap_ci95"):  # percent, as the figures
            cell[k] = None if group.get(k) is None else [round(100 * v, 2) for v in group[k]]
    return cell


def _percent(group: dict[str, Any] | None, metric: str) -> float | None:
    value = None if group is None else group.get(metric)
    return None if value is None else round(100 * value, 2)


def _why_missing(column: Column, plan: Plan, generator: str | None) -> str:
    dataset = DATASETS[column.dataset]
    if column.dataset not in plan.given:
        return f"{dataset.title} not given ({dataset.option})"
    if generator is None:
        return f"not found under {dataset.option} (a folder named {' or '.join(column.folders)})"
    return f"no scored test images of {generator}"


def _mean(table: PaperTable, columns: list[dict[str, Any]]) -> dict[str, Any]:
    """Our mean over the columns measured; with some missing, the paper's mean over the same columns is
    the one our figure compares with (its printed mean covers every column)."""
    paper_mean = dict(zip(table.metrics, table.mean, strict=True))
    out: dict[str, Any] = {"ours": {}, "paper": paper_mean, "paper_of_measured": {}, "delta": {}, "columns": {}}
    for m in table.metrics:
        present = [c for c in columns if c["ours"][m] is not None]
        out["columns"][m] = len(present)
        if not present:
            out["ours"][m] = out["delta"][m] = out["paper_of_measured"][m] = None
            continue
        ours = sum(c["ours"][m] for c in present) / len(present)
        paper = paper_mean[m] if len(present) == len(columns) else sum(c["paper"][m] for c in present) / len(present)
        out["ours"][m], out["delta"][m], out["paper_of_measured"][m] = round(ours, 2), round(ours - paper, 2), paper
    out["partial"] = any(n < len(columns) for n in out["columns"].values()) and any(out["columns"].values())
    return out


def _joined(values: Iterable[str | None]) -> str:
    values = list(values)
    return "-" if all(v is None for v in values) else "/".join("-" if v is None else v for v in values)


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.2f}"


def _count(cell: dict[str, Any]) -> str:
    if cell.get("n") is None:
        return "-"
    return f"{cell['n']} ({cell['n_real']}/{cell['n_fake']})"


def render_table(table: dict[str, Any]) -> str:
    """One table in the paper's layout (Markdown): a column per generator and the mean; rows ours, the
    paper's ITEM row and the difference, then the images each column rests on."""
    metrics, columns, mean = table["metrics"], table["columns"], table["mean"]
    name = "/".join(m.upper() for m in metrics)
    header = [f"{name} (%)", *(c["column"] for c in columns), table["mean_label"]]
    star = "*" if mean["partial"] else ""
    rows = [
        ["ITEM (ours)"]
        + [_joined(_number(c["ours"][m]) for m in metrics) + ("†" if c["few"] else "") for c in columns]
        + [_joined(_number(mean["ours"][m]) for m in metrics) + star],
        ["ITEM (paper)"]
        + [_joined(_number(c["paper"][m]) for m in metrics) for c in columns]
        + [_joined(_number(mean["paper"][m]) for m in metrics)],
        ["Δ (ours − paper)"]
        + [_joined(_signed(c["delta"][m]) for m in metrics) for c in columns]
        + [_joined(_signed(mean["delta"][m]) for m in metrics) + star],
        ["n (real/fake)", *(_count(c) for c in columns), "-"],
    ]
    lines = [
        f"### Table {table['table']}: {table['title']}",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    notes = _notes(table)
    return "\n".join(lines + ([""] + notes if notes else []))


def _notes(table: dict[str, Any]) -> list[str]:
    columns, mean = table["columns"], table["mean"]
    notes = []
    if any(c["few"] for c in columns):
        notes.append(
            f"† rests on fewer than {MIN_PER_CLASS} real or {MIN_PER_CLASS} fake images: unreliable "
            "(95% bootstrap intervals in reproduce.json)"
        )
    if mean["partial"]:
        measured = max(mean["columns"].values())
        notes.append(
            f"* mean over the {measured} of {len(columns)} columns measured; its Δ is against the paper's "
            "values of those columns (the paper's Avg. covers all)"
        )
    reasons: dict[str, list[str]] = {}
    for c in columns:
        if c["missing"]:
            reasons.setdefault(c["missing"], []).append(c["column"])
    notes += [f"- {', '.join(labels)}: {reason}" for reason, labels in reasons.items()]
    return notes


def render(result: dict[str, Any]) -> str:
    """The three tables with a line saying what was trained on what."""
    p = result["protocol"]
    counts = p["counts"]
    lines = [
        f"ITEM trained on {counts['train_real']} real + {counts['train_fake']} fake ProGAN images of CNNDetection "
        f"(seed {p['seed']}, subset {p['subset']}; the paper: {PAPER_TRAIN_COUNT:,} + {PAPER_TRAIN_COUNT:,}), "
        f"calibrated on {counts['val_real']} + {counts['val_fake']}; head {p['head']}, profile {p['profile']}, "
        f"ACC at threshold {p['threshold']:g}.",
    ]
    return "\n\n".join([*lines, *(render_table(t) for t in result["tables"])]) + "\n"


def write_reports(store: Store, result: dict[str, Any], markdown: str) -> list[Path]:
    """reports/reproduce.md and reports/reproduce.json."""
    store.reports.mkdir(parents=True, exist_ok=True)
    md = store.reports / "reproduce.md"
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(markdown)
    tmp.replace(md)  # complete or absent
    return [md, write_json(store.reports / "reproduce.json", result)]
