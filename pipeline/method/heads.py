"""Classification heads on the misalignment vector D, saved without pickle, plus calibration.

The paper's head (Sec. III-C, IV-A): a two-layer MLP with two outputs, trained with cross-entropy
and AdamW (lr 1e-3, weight decay 1e-3) for 50 epochs on D = w1*D_g + w2*D_l. LightGBM and logistic
regression are the cheap alternatives. Every head exposes `logits(x)`, the log-odds that a row is
fake (for the MLP: z_fake - z_real, so sigmoid(logit) is its softmax P(fake)).

Saved formats: MLP and logistic regression as safetensors + JSON (scored with numpy, no torch
needed); LightGBM in its own text format. A head folder holds `config.json` with the head's
configuration, the feature fingerprint it was trained on and its calibration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.engine.config import ConfigError, from_dict, shown
from pipeline.engine.errors import UsageError
from pipeline.engine.registry import Registry

log = logging.getLogger(__name__)

CONFIG = "config.json"
HEADS: Registry[type] = Registry("head")


@dataclass(frozen=True)
class HeadConfig:
    """A head on D = w1*D_g + w2*D_l. Defaults are the paper's MLP (two layers, cross-entropy,
    AdamW lr 1e-3, weight decay 1e-3, 50 epochs); `lightgbm` and `logreg` are the cheap alternatives.
    Fields prefixed `lgbm_` / `logreg_` only matter for that head (and only they enter its fingerprint).
    The fit stage's config adds which rows it trains on (stages/fit.py).
    """

    head: str = "mlp"  # a name in HEADS: mlp | lightgbm | logreg
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

    def __post_init__(self) -> None:
        if self.features not in ("both", "global", "local"):
            raise ConfigError("fit.features must be both, global or local")
        if self.epochs < 1 or self.batch_size < 1 or self.hidden_dim < 1:
            raise ConfigError("fit.epochs, fit.batch_size and fit.hidden_dim must be >= 1")
        ranges = {  # (lowest, highest, whether the lowest itself is allowed)
            "lr": (0.0, 10.0, False), "weight_decay": (0.0, 10.0, True), "lgbm_learning_rate": (0.0, 10.0, False),
            "logreg_c": (0.0, 1e12, False), "lgbm_n_estimators": (1, 1_000_000, True),
            "lgbm_num_leaves": (2, 131_072, True),  # LightGBM's own bounds
            "epochs": (1, 100_000, True), "hidden_dim": (1, 1 << 16, True), "batch_size": (1, 1 << 20, True),
        }
        for name, (low, high, closed) in ranges.items():
            value = getattr(self, name)
            if not (low <= value <= high if closed else low < value <= high):
                side = f">= {low:g}" if closed else f"> {low:g}"
                raise ConfigError(f"fit.{name} must be {side} and at most {high:g}, got {value!r}")
        used = {"both": (self.w1, self.w2), "global": (self.w1,), "local": (self.w2,)}[self.features]
        if all(w == 0 for w in used):
            raise ConfigError(
                f"fit.w1 = {self.w1}, fit.w2 = {self.w2} with features {self.features!r}: D would be all zeros; "
                "give the terms you use a non-zero weight"
            )

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


def feature_matrix(d_global: np.ndarray, d_local: np.ndarray, features: str, w1: float, w2: float) -> np.ndarray:
    """D of Eq. 8 (`both`), or one term alone for the ablation (`global`, `local`)."""
    if features == "global":
        return (w1 * d_global).astype(np.float32)
    if features == "local":
        return (w2 * d_local).astype(np.float32)
    return (w1 * d_global + w2 * d_local).astype(np.float32)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


class Head:
    """Base of the heads: fit, log-odds, save and load (no pickle)."""

    name: ClassVar[str]
    weight_file: ClassVar[str]

    def __init__(self, cfg: HeadConfig) -> None:
        self.cfg = cfg

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def save_weights(self, directory: Path) -> None:
        raise NotImplementedError

    def load_weights(self, directory: Path) -> None:
        raise NotImplementedError


class _NumpyWeights(Head):
    """Heads whose parameters are a few arrays: safetensors on disk, numpy at inference."""

    weight_file = "model.safetensors"
    weights: dict[str, np.ndarray]

    def save_weights(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in self.weights.items()}, str(directory / self.weight_file))

    def load_weights(self, directory: Path) -> None:
        from safetensors.numpy import load_file

        self.weights = load_file(str(directory / self.weight_file))


def build_mlp(in_dim: int, hidden_dim: int, out_dim: int = 2):
    """The two-layer MLP: Linear -> ReLU -> Linear (named fc1/fc2, like timm's Mlp)."""
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(in_dim, hidden_dim)
            self.act = nn.ReLU()
            self.fc2 = nn.Linear(hidden_dim, out_dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    return Mlp()


@HEADS.register("mlp")
class MlpHead(_NumpyWeights):
    """The paper's head, trained with torch on rows held in memory (no data loader: rows are cached)."""

    name = "mlp"

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        import torch

        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        model = build_mlp(x.shape[1], cfg.hidden_dim)
        # fused: one kernel per step for all parameters (the per-tensor loop dominated small steps on CPU)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        loss_fn = torch.nn.CrossEntropyLoss()
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(xt[idx]), yt[idx]).backward()
                opt.step()
        self.weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}

    def logits(self, x: np.ndarray) -> np.ndarray:
        w = {k: v.astype(np.float64) for k, v in self.weights.items()}
        h = np.maximum(x.astype(np.float64) @ w["fc1.weight"].T + w["fc1.bias"], 0.0)
        z = h @ w["fc2.weight"].T + w["fc2.bias"]
        return z[:, 1] - z[:, 0]


@HEADS.register("logreg")
class LogisticHead(_NumpyWeights):
    """L2-regularised logistic regression (scikit-learn), stored as its coefficients."""

    name = "logreg"

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.cfg.logreg_c, max_iter=2000, random_state=self.cfg.seed)
        model.fit(x, y)
        self.weights = {"coef": model.coef_[0].astype(np.float64), "intercept": model.intercept_.astype(np.float64)}

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) @ self.weights["coef"] + self.weights["intercept"][0]


@HEADS.register("lightgbm")
class LightGBMHead(Head):
    """Gradient-boosted trees (LightGBM), stored in LightGBM's text model format."""

    name = "lightgbm"
    weight_file = "model.lgbm.txt"

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        import lightgbm as lgb

        params = {
            "objective": "binary",
            "learning_rate": self.cfg.lgbm_learning_rate,
            "num_leaves": self.cfg.lgbm_num_leaves,
            "seed": self.cfg.seed,
            "deterministic": True,
            "num_threads": os.cpu_count() or 1,
            "verbosity": -1,
        }
        self.booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=self.cfg.lgbm_n_estimators)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, raw_score=True), dtype=np.float64)

    def save_weights(self, directory: Path) -> None:
        self.booster.save_model(str(directory / self.weight_file))

    def load_weights(self, directory: Path) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=str(directory / self.weight_file))


# --- calibration ---------------------------------------------------------------------------------


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of sigmoid(logit / T) on the rows given."""
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    return float(np.exp(minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded").x))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The decision threshold on P(fake) with the highest balanced accuracy on the rows given.

    Candidates are midpoints between consecutive distinct scores (and the extremes); ties go to the
    candidate closest to 0.5.
    """
    s = np.unique(np.asarray(scores, np.float64))
    candidates = np.concatenate([[s[0] - 1e-9], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-9]]) if len(s) else np.array([0.5])
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores)[None, :] >= candidates[:, None]
    tpr = (pred & y).sum(1) / max(y.sum(), 1)
    tnr = (~pred & ~y).sum(1) / max((~y).sum(), 1)
    balanced = (tpr + tnr) / 2
    best = np.flatnonzero(np.isclose(balanced, balanced.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


MIN_CALIBRATION_PER_CLASS = 20  # fewer validation rows of a class than this: no threshold is fitted


def calibrate(head: Head, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, Any]:
    """Temperature and threshold fitted on validation rows only (never on test labels).

    A threshold fitted on a handful of rows is noise: with fewer than MIN_CALIBRATION_PER_CLASS real
    or fake validation rows, calibration is the identity (temperature 1, threshold 0.5) and says why.
    """
    y_val = np.asarray(y_val)
    n_fake = int((y_val == 1).sum())
    n_real = int(len(y_val)) - n_fake
    if min(n_real, n_fake) < MIN_CALIBRATION_PER_CLASS:
        note = (
            f"validation split has {n_real} real and {n_fake} fake row(s), fewer than "
            f"{MIN_CALIBRATION_PER_CLASS} of each: identity calibration (temperature 1, threshold 0.5)"
        )
        log.warning("calibration: %s", note)
        return {"temperature": 1.0, "threshold": 0.5, "n": int(len(y_val)), "fitted": False, "note": note}
    z = head.logits(x_val)
    t = fit_temperature(z, y_val)
    return {"temperature": t, "threshold": best_threshold(sigmoid(z / t), y_val), "n": int(len(y_val)), "fitted": True}


# --- saving and loading --------------------------------------------------------------------------


MAX_CONFIG_BYTES = 16 << 20  # a head's config.json; its weights are read by their own formats' readers


class FittedHead:
    """A head loaded from its folder, with its configuration and calibration.

    A head folder is data, whoever made it: its JSON is checked (types, ranges, no nan or infinity;
    the pipeline configuration it records is only ever resolved through `resolve_saved`, which never
    takes files to read or code to run from it), its weights are read with safetensors or LightGBM's
    text reader only, and nothing in it may be a symbolic link (a link could make loading read
    files outside the folder). The head is tried once on a vector of its input width, so weights of
    the wrong shape fail here, in one line, not in the middle of a prediction."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self._check_folder()
            self.config = json.loads((self.directory / CONFIG).read_text())
            if not isinstance(self.config, dict) or not isinstance(self.config.get("fit"), dict):
                raise ValueError("config.json must be a mapping with a 'fit' mapping")
            fit = self.config["fit"]
            known = {f.name for f in dataclasses.fields(HeadConfig)}  # the rest says which rows it trained on
            self.fit_cfg = from_dict(HeadConfig, {k: v for k, v in fit.items() if k in known}, "fit (head)")
            self.head: Head = HEADS.get(str(self.config.get("head")))(self.fit_cfg)
            self.calibration = _calibration(self.config.get("calibration"))
            self.head.load_weights(self.directory)
            width = int(self.config.get("in_dim") or (self.config.get("features") or {}).get("in_dim") or 0)
            if width:
                zeros = np.zeros((1, width), np.float32)
                out = self.head.logits(self.features(zeros, zeros))
                if np.shape(out) != (1,) or not np.isfinite(out).all():
                    raise ValueError(f"its weights give {np.shape(out)} logits for one input of width {width}")
        except Exception as e:  # a damaged or hostile folder: one line naming it, not a traceback from a reader
            raise UsageError(
                f"cannot load the head in {self.directory}: {type(e).__name__}: {str(e)[:200]} "
                "(delete the folder and run `item fit` to make it again)"
            ) from e

    def _check_folder(self) -> None:
        if self.directory.is_symlink() or not self.directory.is_dir():
            raise ValueError("not a folder (a head is a folder of config.json and weights)")
        for entry in self.directory.iterdir():
            if entry.is_symlink():
                raise ValueError(f"{entry.name} is a symbolic link: a head folder holds its own files only")
        config = self.directory / CONFIG
        if config.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"config.json is {config.stat().st_size} bytes (at most {MAX_CONFIG_BYTES})")

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def description(self) -> str:
        """The folder name (head kind and fingerprint) and what else tells this head from others:
        `mlp-3f2a9c1d04be (both, w1=1, w2=0.5)`."""
        return describe(self.name, self.config.get("fit") or {})

    def features(self, d_global: np.ndarray, d_local: np.ndarray) -> np.ndarray:
        return feature_matrix(d_global, d_local, self.fit_cfg.features, self.fit_cfg.w1, self.fit_cfg.w2)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated P(fake)."""
        return sigmoid(self.head.logits(x))

    def predict_calibrated(self, x: np.ndarray) -> np.ndarray:
        """P(fake) after temperature scaling fitted on the validation split."""
        return sigmoid(self.head.logits(x) / self.calibration["temperature"])


def _calibration(value: Any) -> dict[str, Any]:
    """A head's calibration, checked: a temperature > 0 and a threshold in [0, 1], finite numbers."""
    if value is None:
        return {"temperature": 1.0, "threshold": 0.5}
    if not isinstance(value, dict):
        raise ValueError(f"calibration must be a mapping, got {shown(value)}")
    out = dict(value)
    for key, default, ok in (("temperature", 1.0, lambda t: t > 0), ("threshold", 0.5, lambda t: 0 <= t <= 1)):
        v = out.setdefault(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not ok(v):
            where = "> 0" if key == "temperature" else "in [0, 1]"
            raise ValueError(f"calibration.{key} must be a finite number {where}, got {shown(v)}")
        out[key] = float(v)
    return out


def _number(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(name: str, fit: dict[str, Any], vary: Iterable[str] = ()) -> str:
    """`name (features, w1=.., w2=..[, the knobs in `vary`][, the rows it was narrowed to])` for a head
    fitted with the fit section `fit`: what a table row, predict and status call it. `vary`: the knobs
    that differ between the heads shown together (`varying`)."""
    parts = [str(fit.get("features", "both")), f"w1={_number(fit.get('w1', 1.0))}", f"w2={_number(fit.get('w2', 1.0))}"]
    shown = [key for key in vary if key in fit and key not in SHOWN]
    known = {f.name for f in dataclasses.fields(HeadConfig)}
    # which rows it trained on, when narrowed (train_generators, train_datasets)
    shown += [k for k in sorted(set(fit) - known) if isinstance(fit[k], (list, tuple)) and fit[k] and k not in shown]
    return f"{name} ({', '.join([*parts, *(f'{key}={_number(fit[key])}' for key in shown)])})"


SHOWN = ("head", "features", "w1", "w2")  # the folder name carries the head kind


def varying(fits: Iterable[dict[str, Any]]) -> list[str]:
    """The fit knobs whose values differ between these heads' fit sections (beyond head, features, w1, w2)."""
    fits = list(fits)
    keys = sorted({k for f in fits for k in f} - set(SHOWN))
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in fits}) > 1]


def resolve_model(models: Path, model: str | Path) -> Path:
    """A head given as a folder path, or as a folder name under `models/` (`mlp-3f2a9c1d04be`)."""
    model = Path(model)
    by_name = models / model
    if not model.exists() and len(model.parts) == 1 and (by_name / CONFIG).is_file():
        return by_name
    return model


def save_head(directory: Path, head: Head, config: dict[str, Any]) -> Path:
    """Write weights and config into a temporary folder, then rename it into place (atomic)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    head.save_weights(tmp)
    (tmp / CONFIG).write_text(json.dumps({"head": head.name, **config}, indent=2, sort_keys=True) + "\n")
    if (directory / CONFIG).exists():  # another process saved the same head first: keep it
        shutil.rmtree(tmp)
        return directory
    if directory.exists():  # a broken folder (no config.json): replace it rather than keep it forever
        broken = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.broken"
        os.replace(directory, broken)
        shutil.rmtree(broken, ignore_errors=True)
    os.replace(tmp, directory)
    return directory
