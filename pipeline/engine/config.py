"""Typed, frozen configuration: runtime settings, profiles, params.yaml, and how a stage's own config
class (declared in its module as `Stage.config_class`) is built from a section of them.

A stage's fingerprint is a short hash of its resolved configuration, its code version and the
fingerprints of its input stages. Everything that changes a result is in the stage config;
everything that only changes speed (device, batch sizes, chunk size, workers) is in RuntimeConfig
and never enters a fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.engine.errors import UsageError
from pipeline.engine.registry import Registry

DTYPES = ("float32", "bfloat16", "float16")
MAX_ROWS = 1 << 20  # rows per part or items per model call: past this a value is a typo, not a setting
TINY_PREFIX = "tiny/"
# The version of the tiny builds (pipeline/models/tiny.py): in the fingerprint of every stage whose
# model is one, so rows of an older build are never reused. Bump it when any tiny build changes.
TINY_BUILD = 2


class ConfigError(UsageError):
    """A configuration value or key that is not allowed."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Speed-only settings; never part of a fingerprint."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    chunk_size: int = 256  # rows per part file
    # Per model call: images (caption, ground) or crops (embed). None: each stage's own default, chosen
    # for an 80 GB GPU (Stage.default_batch_size); `batch_sizes` sets single stages ({embed: 1024}).
    batch_size: int | None = None
    batch_sizes: dict[str, int] = field(default_factory=dict)
    loader_threads: int = 2  # threads decoding images (in each feed worker, or in this process)
    # Processes preparing batches (decode, preprocess) ahead of the model. None: on an accelerator, the
    # cores for each GPU less one (at most 8); on a CPU none (the model keeps every core busy). 0: none.
    feed_workers: int | None = None
    # Prepare the next batch (decode, preprocess) in a thread while the model runs: auto = on an
    # accelerator only (on a CPU the thread takes cores from the model); on | off to choose.
    prefetch: str = "auto"
    # Seconds without any result from a dask cluster after which the tasks running that long have their
    # workers restarted and run again (at most `retries` times, then the run fails naming them): cover
    # one chunk plus a model load. None: no limit.
    task_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or (self.batch_size is not None and self.batch_size < 1) or self.loader_threads < 1:
            raise ConfigError("runtime.chunk_size, batch_size and loader_threads must be >= 1")
        limits = {"chunk_size": MAX_ROWS, "batch_size": MAX_ROWS, "loader_threads": 256, "feed_workers": 256}
        for name, most in limits.items():
            value = getattr(self, name)
            if value is not None and value > most:
                raise ConfigError(f"runtime.{name} must be at most {most}, got {value}")
        if self.feed_workers is not None and self.feed_workers < 0:
            raise ConfigError("runtime.feed_workers must be >= 0")
        bad = {
            k: v
            for k, v in self.batch_sizes.items()
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ROWS
        }
        if bad:
            raise ConfigError(
                f"runtime.batch_sizes must map stage names to integers from 1 to {MAX_ROWS}, got {shown(bad)}"
            )
        if self.task_timeout is not None and not 0 < self.task_timeout < float("inf"):
            raise ConfigError(f"runtime.task_timeout must be a number of seconds > 0, got {self.task_timeout!r}")
        if self.prefetch not in ("auto", "on", "off"):
            raise ConfigError(f"runtime.prefetch must be auto, on or off, got {shown(self.prefetch)}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"runtime.device must be auto, cpu, mps, cuda or cuda:N, got {shown(self.device)}")

    def batch_size_of(self, stage: str, default: int) -> int:
        """A stage's batch size: its own setting, else the one for every stage, else its default."""
        return self.batch_sizes.get(stage) or self.batch_size or default


C = TypeVar("C")


def check_dtype(dtype: str, stage: str) -> None:
    """A model dtype must be one the backends know."""
    if dtype not in DTYPES:
        raise ConfigError(f"{stage}.dtype must be one of {DTYPES}, got {shown(dtype)}")


def from_dict(cls: type[C], values: dict[str, Any] | None, where: str) -> C:
    """Build a config dataclass from a dict; unknown keys are an error, None means the default, and
    every value must have its field's type (the error names the field and what it must be)."""
    if values is not None and not isinstance(values, dict):
        section = where.split(" ", 1)[0]
        raise ConfigError(f"{section} must be a mapping of settings (key: value), got {shown(values)}")
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
            raise ConfigError(f"{section}.{key} must be {problem}, got {shown(value)} ({type(value).__name__})")
        kwargs[key] = float(value) if hints[key] is float else value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad value in {where}: {e}") from e


MAX_INT = 2**53  # larger integers lose precision as numbers and overflow array and tensor sizes
PLURAL = {"a number": "numbers", "an integer": "integers", "text": "text values", "true or false": "true/false values"}


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = 4
_SHOWN.maxlevel = 2


def shown(value: Any) -> str:
    """A value as an error line shows it: bounded (a nested or huge value prints its start)."""
    return _SHOWN.repr(value)


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
    if origin is dict:
        return None if isinstance(value, dict) else "a mapping (key: value)"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return "an integer"
        return None if abs(value) <= MAX_INT else f"an integer of at most {MAX_INT} in size"
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return "a number"
        return None if math.isfinite(value) and abs(value) <= MAX_INT else "a finite number (not nan or infinity)"
    if hint is str:
        return None if isinstance(value, str) else "text"
    return None


def as_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# Metadata of a field added to a stage's config after results were cached with it: at its default it
# stays out of the identity, so adding a knob never moves a fingerprint (days of cached GPU work);
# set to anything else, it enters the identity like every other field.
ADDED_LATER = {"added_later": True}


def knob(default: Any) -> Any:
    """A config field added later (see ADDED_LATER)."""
    return field(default=default, metadata=ADDED_LATER)


def identity_of(cfg: Any) -> dict[str, Any]:
    """The config's fields that determine results: every field, but added-later ones at their default."""
    out = as_dict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("added_later") and getattr(cfg, f.name) == f.default:
            out.pop(f.name)
    if str(getattr(cfg, "model", "")).startswith(TINY_PREFIX):
        out["tiny_build"] = TINY_BUILD  # random weights from our own small configs: their version
    return out


# Profiles: named sets of per-stage overrides of the config classes' defaults (the built-in ones are
# registered by the stages package, stages/profiles.py, beside the stages they configure).
PROFILES: Registry[dict[str, dict[str, Any]]] = Registry("profile")


@dataclass(frozen=True)
class PipelineConfig:
    """Resolved configuration of every stage plus runtime settings."""

    profile: str
    stages: dict[str, Any]
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def stage(self, name: str) -> Any:
        return self.stages[name]


def pinned(config: PipelineConfig) -> PipelineConfig:
    """The configuration with everything a stage config resolves at run time fixed to what it resolved
    here (a hub revision to its commit: `pinned()` on the config), for shipping to workers that must
    compute exactly this, whatever their own caches hold."""
    stages = {n: cfg.pinned() if hasattr(cfg, "pinned") else cfg for n, cfg in config.stages.items()}
    return dataclasses.replace(config, stages=stages)


def resolve(
    profile: str | None = None, params: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None
) -> PipelineConfig:
    """Defaults <- profile <- params (params.yaml sections) <- runtime overrides (CLI flags).

    Args:
        profile: profile name; falls back to params["profile"], then "paper".
        params: the parsed params.yaml (keys: profile, runtime, and one section per stage).
        runtime: runtime overrides from the command line (None values ignored).
    """
    from pipeline.engine.stage import STAGES  # the registry imports this module: look it up at call time

    sections = STAGES.config_classes()
    params = dict(params or {})
    name = profile or params.pop("profile", None) or "paper"
    params.pop("profile", None)
    overrides = PROFILES.get(name)
    unknown = sorted(set(params) - set(sections) - {"runtime", "inputs"})
    if unknown:
        raise ConfigError(f"unknown section(s) in params: {', '.join(unknown)}")
    for section in (*sections, "runtime"):
        if params.get(section) is not None and not isinstance(params[section], dict):
            raise ConfigError(f"{section} must be a mapping of settings (key: value), got {shown(params[section])}")
    if not isinstance(params.get("inputs") or [], list | str):
        raise ConfigError(f"inputs must be a list of folders, lists or files, got {shown(params['inputs'])}")
    stages = {}
    for stage, cls in sections.items():
        merged = {**overrides.get(stage, {}), **(params.get(stage) or {})}
        stages[stage] = from_dict(cls, merged, f"{stage} (profile {name})")
    rt = {**(params.get("runtime") or {}), **{k: v for k, v in (runtime or {}).items() if v is not None}}
    runtime_cfg = from_dict(RuntimeConfig, rt, "runtime")
    unknown = sorted(set(runtime_cfg.batch_sizes) - set(STAGES.names()))
    if unknown:
        known = ", ".join(STAGES.names())
        raise ConfigError(f"runtime.batch_sizes: unknown stage(s) {', '.join(unknown)}; stages: {known}")
    return PipelineConfig(profile=name, stages=stages, runtime=runtime_cfg)


MAX_PARAMS_BYTES = 1 << 20

# Settings that name files to read or code to run (model directories and weight files, a text
# encoder, groundingdino-py's Python config): never taken from a configuration someone else saved (a
# shared head folder). They come from this machine's params, else the saved profile's built-in values.
LOCAL_SETTINGS = ("model", "pretrained", "text_encoder", "config_file")


def resolve_saved(
    saved: dict[str, Any], params: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None
) -> tuple[PipelineConfig, list[str]]:
    """A saved pipeline configuration ({profile, stages}, as a head records it) resolved as data: every
    value checked like params.yaml's, and LOCAL_SETTINGS taken from `params` (this machine's), else
    from the saved profile as this code defines it. Also returns the local settings whose saved value
    was not used ("ground.config_file = 'x.py'"), so a caller can say why results may differ."""
    if not isinstance(saved, dict) or not isinstance(saved.get("stages"), dict):
        raise ConfigError("the saved configuration must be a mapping with a 'stages' mapping")
    profile = saved.get("profile")
    if not isinstance(profile, str):
        raise ConfigError(f"the saved configuration's profile must be a name, got {shown(profile)}")
    local = dict(params or {})
    sections: dict[str, Any] = {}
    ignored: list[tuple[str, str, Any]] = []
    for stage, values in saved["stages"].items():
        if not isinstance(values, dict):
            raise ConfigError(f"saved {shown(stage)} must be a mapping of settings, got {shown(values)}")
        mine = local.get(stage) or {}
        section = {k: v for k, v in values.items() if k not in LOCAL_SETTINGS}
        section.update({k: mine[k] for k in LOCAL_SETTINGS if isinstance(mine, dict) and k in mine})
        sections[stage] = section
        ignored += [(stage, k, v) for k, v in values.items() if k in LOCAL_SETTINGS]
    config = resolve(profile, sections, runtime)
    differs = [f"{s}.{k} = {shown(v)}" for s, k, v in ignored if getattr(config.stage(s), k) != v]
    return config, differs


class ParamsLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (`*name`): a few nested aliases make a small file expand to
    gigabytes (a "billion laughs"), and settings never need them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed in a params file", event.start_mark
            )
        return super().compose_node(parent, index)


def load_params(path: str | Path | None, required: bool = False) -> dict[str, Any]:
    """Read params.yaml (an absent file is an empty dict, unless `required`: a file the user named)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        if required:
            raise ConfigError(f"--params {path}: no such file")
        return {}
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size} bytes: a params file is at most {MAX_PARAMS_BYTES}")
    try:
        data = yaml.load(path.read_text(), Loader=ParamsLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())[:300]
        raise ConfigError(f"cannot parse {path}: {first}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data
