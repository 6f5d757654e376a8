"""The ITEM pipeline: `engine/` (store, keys, configuration, stage bases, executors), `models/` (the
model backends), `method/` (Eq. 3-8, heads, metrics) and `app/` (CLI, API, report, bench, demo).
The stages themselves live in the top-level `stages` package.

Importing this package is cheap on purpose: torch, transformers and open_clip are imported only
inside the code paths that run a model, so `item status` and a no-op re-run stay fast.
"""

__version__ = "0.1.0"
