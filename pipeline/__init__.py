"""The ITEM pipeline engine: store, keys, configuration, stage base, executors and CLI.

Importing this package is cheap on purpose: torch, transformers and open_clip are imported only
inside the code paths that run a model, so `item status` and a no-op re-run stay fast.
"""

__version__ = "0.1.0"
