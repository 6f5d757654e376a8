"""What every step of the pipeline shares: a name, its inputs by name, a typed config, a fingerprint.

Two small bases build on `Stage`: `FeatureStage` (engine/feature.py), per-image work resumed by
keys, and `Job` (engine/job.py), work over a whole dataset (fit, evaluate, perturb, ...).

The engine never imports a stage module. A stage is one module: its class, its config class and
its output schema; `@STAGES.register` files the class under its `name` (the `stages` package
registers the built-in ones on import). The engine resolves the names a stage declares as inputs
through that registry, builds each stage's config from its `config_class`, and the pipeline's order
is the registry's dependency order. It names no stage itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from pipeline.engine import errors
from pipeline.engine.config import PipelineConfig, identity_of
from pipeline.engine.keys import short_hash
from pipeline.engine.registry import Registry, UnknownNameError
from pipeline.engine.store import PartDir, Store

log = logging.getLogger(__name__)

MANIFEST = "manifest"  # the store's one-row-per-image table: the input name of the stage that writes it


class StageRegistry(Registry[type]):
    """Stage classes by their `name`; knows the pipeline's order from the inputs each class declares."""

    def register(self, cls: type) -> type:  # type: ignore[override]  (the name comes from the class)
        """Class decorator: file a stage class under its `name` (twice is an error)."""
        return super().register(cls.name)(cls)

    def config_classes(self) -> dict[str, type]:
        """Each registered stage's config class, by stage name (the params.yaml sections)."""
        return {n: self.get(n).config_class for n in self.names() if self.get(n).config_class is not None}

    def producer(self, input_name: str) -> str:
        """The stage that writes the input `input_name` (a stage's own name, or a store table such as
        the manifest, declared by its writer's `output`)."""
        if input_name in self:
            return input_name
        return next((n for n in self.names() if self.get(n).output == input_name), input_name)

    def get(self, name: str) -> type:
        try:
            return super().get(name)
        except UnknownNameError as e:
            hint = "" if len(self) else " (no stage is registered: `import stages` registers the built-in ones)"
            raise UnknownNameError(f"{e}{hint}") from None

    def __len__(self) -> int:
        return len(self.names())

    def order(self) -> list[str]:
        """The registered pipeline steps (`step = True`), each after every stage it reads."""
        steps = {n: self.get(n) for n in self.names() if self.get(n).step}
        done: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in done or name not in steps:
                return
            if name in path:
                raise ValueError(f"stages read each other in a cycle: {' -> '.join((*path, name))}")
            for upstream in steps[name].inputs:
                visit(self.producer(upstream), (*path, name))
            done.append(name)

        # Ties (stages that do not depend on each other) break by registration order: deterministic.
        for name in self._items:
            visit(name, ())
        return done

    def feature_stages(self) -> list[str]:
        """The per-image feature stages in pipeline order (what `status` reports on)."""
        return [n for n in self.order() if self.get(n).per_image]


STAGES = StageRegistry("stage")


@dataclass
class ChunkResult:
    """What one chunk of a feature stage wrote."""

    ok: int = 0
    error: int = 0
    written: bool = False
    errors: dict[str, int] = field(default_factory=dict)
    reported: bool = False  # its rows were already passed to the caller's progress, batch by batch


@dataclass
class RunStats:
    """What one run of a stage did."""

    stage: str
    fingerprint: str
    todo: int = 0
    ok: int = 0
    error: int = 0
    parts: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, other: ChunkResult) -> None:
        self.ok += other.ok
        self.error += other.error
        self.parts += 1 if other.written else 0
        for reason, n in other.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + n

    def count_error(self, kind: str | None, stage: str | None) -> None:
        """One more error row, grouped by its kind and the stage it arose in (errors.label)."""
        self.error += 1
        group = errors.label(kind, stage, self.stage)
        self.errors[group] = self.errors.get(group, 0) + 1

    @property
    def computed(self) -> int:
        return self.ok + self.error


class Stage(ABC):
    """A pipeline step with a fingerprinted output.

    Subclasses set `name`, `inputs` (names of the stages whose output they read, or "manifest"),
    `config_class` (a frozen dataclass: the stage's params.yaml section, None for no settings) and
    `version`, and derive from `FeatureStage` or `Job`.

    Args:
        config: the resolved pipeline configuration.
        store: where inputs are read and outputs written.
    """

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[type | None] = None
    output: ClassVar[str | None] = None  # a store table this stage writes instead of features (MANIFEST)
    version: ClassVar[int] = 1  # bump when the computation changes: a new fingerprint
    step: ClassVar[bool] = True  # part of the pipeline's order (`item run`); False for side jobs
    per_image: ClassVar[bool] = False  # True for FeatureStage: one row per image, resumed by keys

    def __init__(self, config: PipelineConfig, store: Store) -> None:
        self.pipeline = config
        self.cfg = config.stage(self.name) if self.name in config.stages else None
        self.runtime = config.runtime
        self.store = store

    def upstream(self, name: str) -> Stage:
        """The stage this one reads under `name`, built from the same configuration and store."""
        return STAGES.get(name)(self.pipeline, self.store)

    @cached_property
    def fingerprint(self) -> str:
        return short_hash(json.dumps(self.identity(), sort_keys=True, separators=(",", ":")))

    def identity(self) -> dict[str, Any]:
        """Everything that determines this stage's results (hashed into the fingerprint)."""
        upstream = {name: self.upstream(name).fingerprint for name in self.inputs if name != MANIFEST}
        if self.cfg is None:
            config = {}
        else:  # a config that resolves part of itself (a hub revision) says so with identity()
            config = self.cfg.identity() if hasattr(self.cfg, "identity") else identity_of(self.cfg)
        return {"stage": self.name, "version": self.version, "config": config, "inputs": upstream}

    def summary(self) -> dict[str, Any] | None:
        """A small dict that changes exactly when this stage's stored output does (what DVC tracks),
        or None for a stage whose output DVC tracks otherwise."""
        return None

    def input_dir(self, name: str) -> PartDir:
        """Where the rows of input `name` under this configuration live."""
        if name == MANIFEST:
            return self.store.manifest
        upstream = self.upstream(name)
        # With the upstream's schema, a foreign part in its folder is refused instead of read as data.
        return self.store.features(name, upstream.fingerprint, getattr(upstream, "schema", None))


def part_summary(stage: str, fingerprint: str, part_dir: PartDir) -> dict[str, Any]:
    """Counts and a digest of the current (image_id, status) pairs of a part folder."""
    rows = part_dir.current_keys().sort_by("image_id")
    ids, status = rows.column("image_id").to_pylist(), rows.column("status").to_pylist()
    digest = hashlib.sha256("".join(f"{i}:{s};" for i, s in zip(ids, status, strict=True)).encode())
    return {
        "stage": stage,
        "fingerprint": fingerprint,
        "rows": len(ids),
        "ok": status.count("ok"),
        "error": status.count("error"),
        "digest": digest.hexdigest()[:16],
    }
