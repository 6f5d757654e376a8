"""Stages, backends and profiles from outside this package, registered the way built-in ones are.

A plugin is a module whose import registers something (`@STAGES.register` on a stage class, a
backend into its registry). Modules named in `ITEM_PLUGINS` (comma-separated), or installed with an
`item.plugins` entry point, are imported once, before the CLI builds its commands, so a new stage is
one file and its registration: its CLI command, `item run` and `item status` follow from the registry.
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points

from pipeline.engine.errors import UsageError

log = logging.getLogger(__name__)

ENV = "ITEM_PLUGINS"
GROUP = "item.plugins"
_loaded: list[str] = []


def load_plugins() -> list[str]:
    """Import every plugin module once; the names imported. A module that cannot be imported is a
    UsageError naming it (a typo in ITEM_PLUGINS must not silently drop a stage)."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    names += [ep.value.split(":", 1)[0] for ep in entry_points(group=GROUP)]
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UsageError(f"{ENV}: cannot import plugin module {name!r}: {e}") from e
        _loaded.append(name)
        log.debug("plugin %s loaded", name)
    return list(_loaded)
