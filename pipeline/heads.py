"""Classification heads on the misalignment vector D, saved without pickle.

The paper's head (Sec. III-C, IV-A): a two-layer MLP with two outputs, trained with
cross-entropy and AdamW (lr 1e-3, weight decay 1e-3) for 50 epochs on D = w1*D_g + w2*D_l.
Saved as safetensors + JSON; inference runs in numpy, so scoring needs no torch.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import FitConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def feature_matrix(d_global: np.ndarray, d_local: np.ndarray, features: str, w1: float, w2: float) -> np.ndarray:
    """D of Eq. 8 (`both`), or one term alone for the ablation (`global`, `local`)."""
    if features == "global":
        return (w1 * d_global).astype(np.float32)
    if features == "local":
        return (w2 * d_local).astype(np.float32)
    return (w1 * d_global + w2 * d_local).astype(np.float32)


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


def train_mlp(x: np.ndarray, y: np.ndarray, cfg: FitConfig) -> dict[str, np.ndarray]:
    """Train the MLP head on rows `x` with labels `y` (0 real, 1 fake); returns its weights."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_mlp(x.shape[1], cfg.hidden_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


class NumpyMlp:
    """Inference of a saved MLP head with numpy: P(fake) for rows of D."""

    def __init__(self, weights: dict[str, np.ndarray], config: dict[str, Any]) -> None:
        self.weights = weights
        self.config = config

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        w = self.weights
        h = np.maximum(x.astype(np.float64) @ w["fc1.weight"].T.astype(np.float64) + w["fc1.bias"], 0.0)
        logits = h @ w["fc2.weight"].T.astype(np.float64) + w["fc2.bias"]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p[:, 1] / p.sum(axis=1)


def save_head(directory: Path, weights: dict[str, np.ndarray], config: dict[str, Any]) -> Path:
    """Write weights (safetensors) and config (JSON) into a temporary folder, then rename it into place."""
    from safetensors.numpy import save_file

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if directory.exists():
        shutil.rmtree(tmp)
        return directory
    os.replace(tmp, directory)
    return directory


def load_head(directory: Path) -> NumpyMlp:
    from safetensors.numpy import load_file

    config = json.loads((directory / CONFIG).read_text())
    return NumpyMlp(load_file(str(directory / WEIGHTS)), config)
