"""One module per stage. `STAGES` maps names to classes in pipeline order."""

from __future__ import annotations

import importlib

from pipeline.registry import Registry

STAGES: Registry[type] = Registry("stage")

# Pipeline order; each module registers its class on import.
ORDER = ("ingest", "caption", "ground", "embed", "distance", "fit", "evaluate")
FEATURE_STAGES = ("caption", "ground", "embed", "distance")


def get_stage_class(name: str) -> type:
    if name not in STAGES:
        if name not in ORDER:
            STAGES.get(name)  # raises the registry's error listing known names
        importlib.import_module(f"stages.{name}")
    return STAGES.get(name)
