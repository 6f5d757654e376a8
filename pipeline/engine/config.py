"""Typed, frozen configuration: one dataclass per stage, profiles, params.yaml, fingerprints.

A stage's fingerprint is a short hash of its resolved configuration, its code version and the
fingerprints of its input stages. Everything that changes a result is in the stage config;
everything that only changes speed (device, batch sizes, chunk size, workers) is in RuntimeConfig
and never enters a fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.engine.errors import UsageError
from pipeline.engine.hub import resolve_revision
from pipeline.engine.registry import Registry

DTYPES = ("float32", "bfloat16", "float16")
TINY_PREFIX = "tiny/"


class ConfigError(UsageError):
    """A configuration value or key that is not allowed."""


@dataclass(frozen=True)
class IngestConfig:
    """How files become manifest rows."""

    max_image_pixels: int = 89_478_485  # Pillow's default decompression-bomb limit
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/val/test when no split is given
    decode_timeout: float = 60.0  # seconds per file, decoded in a worker process; 0: in-process, no limit

    def __post_init__(self) -> None:
        if self.max_image_pixels <= 0:
            raise ConfigError("ingest.max_image_pixels must be positive")
        if len(self.split_fractions) != 3 or any(not 0.0 <= f <= 1.0 for f in self.split_fractions):
            raise ConfigError(f"ingest.split_fractions must be three fractions in [0, 1], got {self.split_fractions}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ConfigError("ingest.split_fractions must be three fractions (train, val, test) summing to 1")


@dataclass(frozen=True)
class CaptionConfig:
    """Captioner. `model` is a hub id, a local directory, or `tiny/...` (random small model)."""

    backend: str = "blip2"  # blip2 | column (use the manifest's caption column)
    model: str = "Salesforce/blip2-opt-2.7b"
    revision: str | None = None
    dtype: str = "bfloat16"
    prompt: str | None = None  # None: unconditional captioning, as in the paper
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    num_beams: int = 1
    seed: int = 0  # random init of tiny models

    def identity(self) -> dict[str, Any]:
        """As configured, with a hub model's revision resolved to its commit (see engine/hub.py)."""
        return {**as_dict(self), "revision": resolve_revision(self.model, self.revision)}

    def __post_init__(self) -> None:
        _check_dtype(self.dtype, "caption")
        if self.max_new_tokens < 1 or self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise ConfigError("caption: need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1")


@dataclass(frozen=True)
class GroundConfig:
    """Open-vocabulary detector prompted with the caption."""

    backend: str = "transformers"  # transformers | groundingdino-py
    model: str = "IDEA-Research/grounding-dino-base"
    revision: str | None = None
    dtype: str = "float32"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    max_objects: int = 16  # keep the highest-scoring objects
    shortest_edge: int = 800
    longest_edge: int = 1333
    text_encoder: str | None = None  # groundingdino-py only: BERT hub id or local directory
    config_file: str | None = None  # groundingdino-py only: its model config (.py)
    seed: int = 0

    def identity(self) -> dict[str, Any]:
        """As configured, with a hub model's revision resolved to its commit (see engine/hub.py)."""
        return {**as_dict(self), "revision": resolve_revision(self.model, self.revision)}

    def __post_init__(self) -> None:
        _check_dtype(self.dtype, "ground")
        for name in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"ground.{name} must be in [0, 1]")
        if self.max_objects < 1:
            raise ConfigError("ground.max_objects must be >= 1")


@dataclass(frozen=True)
class EmbedConfig:
    """CLIP encoder (open_clip). `pretrained`: an open_clip tag, a .safetensors file, or "none" (random)."""

    model: str = "ViT-L-14-quickgelu"  # OpenAI weights use QuickGELU
    pretrained: str = "openai"
    # float32: bf16 moves ViT-L/14 embeddings and D by about 1.2% (README, "Precision"); CLIP is the
    # cheap model of the three, so the stored raw embeddings keep full precision by default.
    dtype: str = "float32"
    image_crop: str = "center"  # center: crop the image's centre (paper); resize_center: open_clip's default
    seed: int = 0

    def __post_init__(self) -> None:
        _check_dtype(self.dtype, "embed")
        if self.image_crop not in ("center", "resize_center"):
            raise ConfigError("embed.image_crop must be 'center' or 'resize_center'")


@dataclass(frozen=True)
class DistanceConfig:
    """Eq. 3-7 have no knobs; the weights w1, w2 of Eq. 8 belong to the head (fit)."""


@dataclass(frozen=True)
class FitConfig:
    """The head on D = w1*D_g + w2*D_l. Defaults are the paper's MLP (two layers, cross-entropy,
    AdamW lr 1e-3, weight decay 1e-3, 50 epochs); `lightgbm` and `logreg` are the cheap alternatives.
    Fields prefixed `lgbm_` / `logreg_` only matter for that head (and only they enter its fingerprint).
    """

    head: str = "mlp"  # a name in pipeline.method.heads.HEADS: mlp | lightgbm | logreg
    features: str = "both"  # both | global | local (the ablation of Fig. 5)
    w1: float = 1.0
    w2: float = 1.0
    hidden_dim: int = 256  # not given in the paper; 512 fits 2.6x slower on a CPU
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 256
    lgbm_n_estimators: int = 300
    lgbm_learning_rate: float = 0.05
    lgbm_num_leaves: int = 31
    logreg_c: float = 1.0
    seed: int = 0
    train_split: str = "train"
    calibration_split: str = "val"
    train_generators: tuple[str, ...] = ()  # train (and calibrate) on these generators only; empty: all
    train_datasets: tuple[str, ...] = ()  # ... and/or these datasets only

    def __post_init__(self) -> None:
        if self.features not in ("both", "global", "local"):
            raise ConfigError("fit.features must be both, global or local")
        if self.epochs < 1 or self.batch_size < 1 or self.hidden_dim < 1:
            raise ConfigError("fit.epochs, fit.batch_size and fit.hidden_dim must be >= 1")
        used = {"both": (self.w1, self.w2), "global": (self.w1,), "local": (self.w2,)}[self.features]
        if all(w == 0 for w in used):
            raise ConfigError(
                f"fit.w1 = {self.w1}, fit.w2 = {self.w2} with features {self.features!r}: D would be all zeros; "
                "give the terms you use a non-zero weight"
            )
        if self.train_split == self.calibration_split:
            raise ConfigError("fit.calibration_split must differ from fit.train_split")

    def identity(self) -> dict[str, Any]:
        """The fields that change this head's result (other heads' knobs left out)."""
        prefixes = {"lightgbm": ("lgbm_",), "logreg": ("logreg_",)}
        mlp_only = ("hidden_dim", "epochs", "lr", "weight_decay", "batch_size")
        out = {}
        for f in dataclasses.fields(self):
            if f.name.startswith(("lgbm_", "logreg_")) and not f.name.startswith(prefixes.get(self.head, ())):
                continue
            if f.name in mlp_only and self.head != "mlp":
                continue
            out[f.name] = getattr(self, f.name)
        return out


@dataclass(frozen=True)
class EvaluateConfig:
    """Which split the evaluation reads (falls back to val when the split is empty)."""

    split: str = "test"
    threshold: float = 0.5
    heads: tuple[str, ...] = ()  # methods for the comparison table: item, unifd, defake, cosine, cosine-local, format


@dataclass(frozen=True)
class RuntimeConfig:
    """Speed-only settings; never part of a fingerprint."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    chunk_size: int = 256  # rows per part file
    batch_size: int = 16  # images per model call
    loader_threads: int = 2  # threads decoding images
    # Prepare the next batch (decode, preprocess) in a thread while the model runs: auto = on an
    # accelerator only (on a CPU the thread takes cores from the model); on | off to choose.
    prefetch: str = "auto"

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.batch_size < 1 or self.loader_threads < 1:
            raise ConfigError("runtime.chunk_size, batch_size and loader_threads must be >= 1")
        if self.prefetch not in ("auto", "on", "off"):
            raise ConfigError(f"runtime.prefetch must be auto, on or off, got {self.prefetch!r}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"runtime.device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")


STAGE_CONFIGS: dict[str, type] = {
    "ingest": IngestConfig,
    "caption": CaptionConfig,
    "ground": GroundConfig,
    "embed": EmbedConfig,
    "distance": DistanceConfig,
    "fit": FitConfig,
    "evaluate": EvaluateConfig,
}

C = TypeVar("C")


def _check_dtype(dtype: str, stage: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"{stage}.dtype must be one of {DTYPES}, got {dtype!r}")


def from_dict(cls: type[C], values: dict[str, Any] | None, where: str) -> C:
    """Build a config dataclass from a dict; unknown keys are an error, None means the default, and
    every value must have its field's type (the error names the field and what it must be)."""
    if values is not None and not isinstance(values, dict):
        section = where.split(" ", 1)[0]
        raise ConfigError(f"{section} must be a mapping of settings (key: value), got {values!r}")
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if value is None:
            continue
        value = tuple(value) if isinstance(value, list) else value
        problem = _type_problem(value, hints[key])
        if problem:
            section = where.split(" ", 1)[0]
            raise ConfigError(f"{section}.{key} must be {problem}, got {value!r} ({type(value).__name__})")
        kwargs[key] = float(value) if hints[key] is float else value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad value in {where}: {e}") from e


PLURAL = {"a number": "numbers", "an integer": "integers", "text": "text values", "true or false": "true/false values"}


def _type_problem(value: Any, hint: Any) -> str | None:
    """None when `value` fits the type `hint`, else what it must be ("an integer", ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if origin is tuple:
        if not isinstance(value, tuple):
            return "a list"
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return f"a list of {len(items)} values"
        inner = [_type_problem(v, a) for v, a in zip(value, items, strict=True)]
        wrong = next((p for p in inner if p), None)
        return None if wrong is None else f"a list of {PLURAL.get(wrong, wrong)}"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "text"
    return None


def as_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


PROFILES: Registry[dict[str, dict[str, Any]]] = Registry("profile")

PROFILES.register("paper")({})  # the dataclass defaults are the paper's settings
# The CLIP ablation of Fig. 8: the paper's pipeline with another open_clip model (OpenAI weights).
PROFILES.register("clip-rn50")({"embed": {"model": "RN50-quickgelu", "pretrained": "openai"}})
PROFILES.register("clip-b16")({"embed": {"model": "ViT-B-16-quickgelu", "pretrained": "openai"}})
# The captioner ablation of Fig. 7: BLIP, and LLaVA asked the paper's one-sentence caption prompt.
PROFILES.register("blip")({"caption": {"backend": "blip", "model": "Salesforce/blip-image-captioning-large"}})
PROFILES.register("llava")({"caption": {"backend": "llava", "model": "llava-hf/llava-1.5-7b-hf"}})

PROFILES.register("tiny")(
    {
        "caption": {"model": "tiny/blip2", "dtype": "float32", "max_new_tokens": 8, "min_new_tokens": 3},
        "ground": {
            "model": "tiny/grounding-dino",
            "dtype": "float32",
            "box_threshold": 0.0,
            "text_threshold": 0.0,
            "max_objects": 4,
            "shortest_edge": 224,
            "longest_edge": 320,
        },
        "embed": {"model": "tiny/clip", "pretrained": "none", "dtype": "float32"},
        "fit": {"hidden_dim": 64, "batch_size": 16},  # small sets need more steps per epoch
    }
)
# The paper's settings on the tiny models (thresholds 0.35/0.25, 800/1333 resize, bf16, 16 objects,
# 30 new tokens): every branch a real run takes, offline, for the tests.
PROFILES.register("tiny-paper")(
    {
        "caption": {"model": "tiny/blip2", "min_new_tokens": 3},
        "ground": {"model": "tiny/grounding-dino"},
        "embed": {"model": "tiny/clip", "pretrained": "none"},
        "fit": {"hidden_dim": 64, "batch_size": 16},
    }
)


@dataclass(frozen=True)
class PipelineConfig:
    """Resolved configuration of every stage plus runtime settings."""

    profile: str
    stages: dict[str, Any]
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def stage(self, name: str) -> Any:
        return self.stages[name]


def resolve(
    profile: str | None = None, params: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None
) -> PipelineConfig:
    """Defaults <- profile <- params (params.yaml sections) <- runtime overrides (CLI flags).

    Args:
        profile: profile name; falls back to params["profile"], then "paper".
        params: the parsed params.yaml (keys: profile, runtime, and one section per stage).
        runtime: runtime overrides from the command line (None values ignored).
    """
    params = dict(params or {})
    name = profile or params.pop("profile", None) or "paper"
    params.pop("profile", None)
    overrides = PROFILES.get(name)
    unknown = sorted(set(params) - set(STAGE_CONFIGS) - {"runtime", "inputs"})
    if unknown:
        raise ConfigError(f"unknown section(s) in params: {', '.join(unknown)}")
    for section in (*STAGE_CONFIGS, "runtime"):
        if params.get(section) is not None and not isinstance(params[section], dict):
            raise ConfigError(f"{section} must be a mapping of settings (key: value), got {params[section]!r}")
    if not isinstance(params.get("inputs") or [], list | str):
        raise ConfigError(f"inputs must be a list of folders, lists or files, got {params['inputs']!r}")
    stages = {}
    for stage, cls in STAGE_CONFIGS.items():
        merged = {**overrides.get(stage, {}), **(params.get(stage) or {})}
        stages[stage] = from_dict(cls, merged, f"{stage} (profile {name})")
    rt = {**(params.get("runtime") or {}), **{k: v for k, v in (runtime or {}).items() if v is not None}}
    return PipelineConfig(profile=name, stages=stages, runtime=from_dict(RuntimeConfig, rt, "runtime"))


def load_params(path: str | Path | None, required: bool = False) -> dict[str, Any]:
    """Read params.yaml (an absent file is an empty dict, unless `required`: a file the user named)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        if required:
            raise ConfigError(f"--params {path}: no such file")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data
