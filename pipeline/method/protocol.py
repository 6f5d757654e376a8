"""The paper's evaluation protocol on the user's copies of its datasets: which files train, calibrate
and test, and under which of the paper's columns (`item reproduce` runs it: pipeline/app/reproduce.py).

Train: a seeded subset of CNNDetection's ProGAN training images (40,000 real + 40,000 fake, as in
the paper), calibrated on a seeded subset of its val/ folder. Test, per generator: the columns of
Tables I-III (method/tables.py). Files are read by the folder layouts of engine/sources.py; the
subset is drawn by method/sampling.py, so it is the same wherever and however the dataset is stored.

Manifest rows keep the dataset, generator and split an image was first ingested with. The
training subset is therefore checked against what the data directory already holds: another
subset there (an earlier run with other counts or seed) or the same images ingested under another
dataset is an error that names the fix (a fresh --data-dir), never a silently different protocol.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

from pipeline.engine import locations
from pipeline.engine.errors import UsageError
from pipeline.engine.keys import image_id_of_bytes
from pipeline.engine.sources import LAYOUTS, Source, discover, split_at
from pipeline.engine.store import Store
from pipeline.method.sampling import Smallest, sample_key, subset_digest
from pipeline.method.tables import PAPER_TRAIN_COUNT, TABLES, Column

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A benchmark the user points at with one option, and the folder layout (engine/sources.py) it has."""

    option: str
    title: str
    layout: str


DATASETS = {
    "cnndetection": Dataset("--cnndetection", "CNNDetection", "cnndetection"),
    "ufd": Dataset("--ufd", "UniversalFakeDetect's diffusion sets", "cnndetection"),
    "diffusionforensics": Dataset("--diffusionforensics", "DiffusionForensics", "diffusionforensics"),
    "genimage": Dataset("--genimage", "GenImage", "genimage"),
}

# --- where each file belongs ---------------------------------------------------------------------

TRAIN_DATASET = "cnndetection-train"  # the manifest dataset of the ProGAN training and validation images
TRAIN_GENERATOR = "progan"
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


# Where Table I's Deepfakes column comes from. The paper's footnote names whichfaceisreal.com (WFIR);
# the works whose protocol and baseline rows it follows (CNNDetection [12], UniversalFakeDetect
# [15]) report "Deepfakes" on CNNDetection's `deepfake` folder (FaceForensics++), which is therefore
# the default: the other rows of Table I were measured there. CNNDetection's test set ships both.
DEEPFAKES_COLUMN = "Deepfakes"
DEEPFAKES_SOURCES: dict[str, tuple[str, ...]] = {
    "faceforensics": ("deepfake", "deepfakes"),  # CNNDetection's test/deepfake: FaceForensics++
    "whichfaceisreal": ("whichfaceisreal", "wfir"),  # CNNDetection's test/whichfaceisreal: the footnote's
}


def columns_of(protocol: Protocol | None = None) -> tuple[Column, ...]:
    """The tables' columns with the folders this protocol reads them from (the Deepfakes source)."""
    folders = DEEPFAKES_SOURCES[(protocol or Protocol()).deepfakes]
    return tuple(
        dataclasses.replace(c, folders=folders) if (c.dataset, c.label) == ("cnndetection", DEEPFAKES_COLUMN) else c
        for c in dict.fromkeys(c for t in TABLES for c in t.columns)
    )


def _first_column(parts: Iterable[str], dataset: str, protocol: Protocol | None = None) -> tuple[str, Column] | None:
    """The first folder of `parts` that names a column of `dataset`, with that column."""
    known = {canonical(f): c for c in columns_of(protocol) if c.dataset == dataset for f in c.folders}
    return next(((p, known[canonical(p)]) for p in parts if canonical(p) in known), None)


def _layout(dataset: str, parts: tuple[str, ...]) -> tuple[int | None, str | None, str | None]:
    """(label, generator, split) of a file's folders by its dataset's layout rules (the root's name first)."""
    return LAYOUTS.get(DATASETS[dataset].layout)(parts, "")


def place_cnndetection(parts: tuple[str, ...], protocol: Protocol | None = None) -> Placement | None:
    """`train|val/[progan/]<class>/0_real|1_fake` are ProGAN pools; `test/<generator>/[<class>/]...` (or a
    tree with no split folder: CNN_synth_testset) are test images of a table's generator."""
    label, _, split = _layout("cnndetection", parts)
    if label is None:
        return None
    at = split_at(parts)
    rest = parts[at + 1 :] if at is not None else parts
    if split in ("train", "val"):  # CNNDetection's training and validation sets are all ProGAN
        # The key leaves out a `progan` level (UniversalFakeDetect's copy has train/progan/<class>).
        key = "/".join((split, *(p for p in rest if p.lower() != TRAIN_GENERATOR)))
        return Placement(split, TRAIN_GENERATOR, label, key=key)
    found = _first_column(rest, "cnndetection", protocol)
    if found is None:
        return None  # crn, imle, san, seeingdark, and the Deepfakes source not chosen: not in the tables
    column = found[1]
    return Placement("test", f"cnndetection/{column.folders[0]}", label, column.label if label else None)


def place_ufd(parts: tuple[str, ...], protocol: Protocol | None = None) -> Placement | None:
    """`diffusion_datasets/<generator>/1_fake`, reals in `laion/0_real` and `imagenet/0_real`. Generators
    are named `ufd/<real source>/<generator>` so that evaluation pairs each with its reals."""
    label, _, _ = _layout("ufd", parts)
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


def place_genimage(parts: tuple[str, ...], protocol: Protocol | None = None) -> Placement | None:
    """`<generator>/<subset>/val/{ai,nature}`: the val split is GenImage's test set; train is skipped."""
    label, _, split = _layout("genimage", parts)
    if label is None or split == "train":
        return None
    found = _first_column(parts, "genimage")
    if found is None:
        return None
    column = found[1]
    return Placement("test", f"genimage/{column.folders[0]}", label, column.label if label == 1 else None)


def place_diffusionforensics(parts: tuple[str, ...], protocol: Protocol | None = None) -> Placement | None:
    """`[images/]test/<source>/<generator>/*`, reals in `<source>/real`; DIRE maps and reconstructions
    and the train/val splits are skipped."""
    label, generator, split = _layout("diffusionforensics", parts)
    if split != "test" or generator is None or any(canonical(p) in DF_DERIVED for p in parts[: split_at(parts)]):
        return None
    if label == 0:
        return Placement("test", f"diffusionforensics/{generator}", 0)
    found = _first_column((generator.rsplit("/", 1)[1],), "diffusionforensics")
    if found is None:
        return None
    return Placement("test", f"diffusionforensics/{generator}", 1, found[1].label)


PLACERS: dict[str, Callable[[tuple[str, ...], Protocol | None], Placement | None]] = {
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


def placed(dataset: str, root: str | Path, protocol: Protocol | None = None) -> Iterator[tuple[Source, Placement]]:
    """Every file under `root` (a folder, zip or tar) that belongs to the protocol, with its place."""
    text = _root_text(root)
    if not locations.is_url(text) and not Path(text).exists():
        raise UsageError(f"{DATASETS[dataset].option} {root}: no such folder or archive")
    place = PLACERS[dataset]
    skipped = 0
    for source in discover([text], dataset=dataset, layout=DATASETS[dataset].layout):
        parts = relative_parts(source.path, text)
        where = place(parts[:-1], protocol)
        if where is None:
            skipped += 1
            continue
        yield source, dataclasses.replace(where, key="/".join((where.key, parts[-1])) if where.key else "")
    if skipped:
        log.info("reproduce: %s %s: %d file(s) belong to no table of the paper: skipped", dataset, root, skipped)


# --- the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """The options of a reproduction."""

    train_count: int = PAPER_TRAIN_COUNT  # ProGAN training images per class (real, fake)
    val_count: int = 1_000  # validation images per class, from CNNDetection's val/ (calibration only)
    seed: int = 0
    deepfakes: str = "faceforensics"  # Table I's Deepfakes column: faceforensics | whichfaceisreal

    def __post_init__(self) -> None:
        if self.deepfakes not in DEEPFAKES_SOURCES:
            raise UsageError(f"--deepfakes must be one of {', '.join(DEEPFAKES_SOURCES)}, got {self.deepfakes!r}")
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
            for source, where in placed(dataset, root, protocol):
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
    plan.subset = subset_digest(keys)
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
