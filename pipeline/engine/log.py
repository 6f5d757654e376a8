"""Logging set up once, by the CLI; library modules only call logging.getLogger(__name__)."""

from __future__ import annotations

import logging
import os
import warnings


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=logging.WARNING,  # libraries (open_clip logs to the root logger) stay quiet
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for name in ("pipeline", "stages", "item"):
        logging.getLogger(name).setLevel(level)
    # Third-party chatter that says nothing to a user of this tool.
    for name in ("httpx", "urllib3", "filelock", "huggingface_hub", "transformers", "PIL", "distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision|transformers|open_clip")
