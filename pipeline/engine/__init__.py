"""The engine: content-addressed Parquet store, keys, typed configuration and profiles, the stage
bases (per-image feature stages resumed by keys; whole-dataset jobs), the stage registry, executors,
image decoding and input discovery. It knows no stage, model or head: stages register into it."""
