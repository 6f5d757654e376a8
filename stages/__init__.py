"""The built-in stages, one module each. Importing this package registers every one of them into
the engine's `STAGES` registry (pipeline.engine.stage); no stage module imports another.

Per-image feature stages (engine/feature.py's base, resumed by keys): caption, ground, embed,
distance. Whole-dataset jobs (engine/job.py's base): ingest, fit, evaluate, and the side jobs
baselines, perturb and robustness. `profiles` registers the built-in profiles (paper, tiny, ...).
"""

from stages import (  # noqa: F401  (each module registers its class)
    baselines,
    caption,
    distance,
    embed,
    evaluate,
    fit,
    ground,
    ingest,
    perturb,
    profiles,
    robustness,
)
