"""`make gpu-check`: the paper profile at full size (random weights, smoke-paper's builds) on one GPU,
in one command: what a first GPU run needs to know before it is pointed at a dataset.

On about 200 mixed-size JPEGs of 1-2 MP it measures, and appends to BENCHMARKS.md with the GPU's name:
- images/s of each model stage (model load timed apart) and end to end, the busiest stage's GPU
  utilisation (sampled), peak GPU memory per stage, images per Grounding DINO call;
- caption at batch 16 against 64, ground in float32 against TF32 against bf16, embed at several
  batch sizes (each on a fresh data directory: batch size and TF32 are speed settings, so the rows
  would otherwise be up to date);
- a dask run with one worker per GPU, its rows checked against the in-process run's.
`--size small --images 8 --device cpu` runs every step on small models on a CPU (the tests do: it
cannot rot). Targets on an H200 (the scale issue): ground >= 60 images/s, caption >= 250, embed
>= 1,500 crops/s, end to end >= 40, busiest stage's utilisation >= 80%.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from benchmarks.bench import append_markdown, details, figure, shown, verdict
from benchmarks.smoke import build_models, smoke_config
from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import PipelineConfig, resolve
from pipeline.engine.devices import resolve_device
from pipeline.engine.executors import DaskExecutor
from pipeline.engine.log import setup_logging
from pipeline.engine.store import Store

log = logging.getLogger(__name__)

MODEL_STAGES = ("caption", "ground", "embed", "distance")
# 1-2 MP, landscape and portrait, in a mix where Grounding DINO's resize gives a few shapes.
SIZES = ((1600, 1000), (1200, 900), (1000, 1500), (1920, 1080), (1400, 1400), (1280, 960), (900, 1200))
TARGETS = {"caption": 250.0, "ground": 60.0, "end to end": 40.0}  # images/s on an H200; embed: crops/s
EMBED_CROPS_TARGET = 1500.0


def mixed_jpegs(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        small = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((w, h)).save(folder / f"{i:05d}.jpg", quality=90)


class Utilisation:
    """GPU utilisation sampled every 0.2 s while a stage runs (nvidia-smi; None where there is none)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self) -> Utilisation:
        if self.device.startswith("cuda"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        index = self.device.split(":", 1)[1] if ":" in self.device else "0"
        while not self._stop.wait(0.2):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5,
                )
                self.samples.append(float(out.stdout.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")


def gpu_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU (no GPU)"


def timed_stage(name: str, config: PipelineConfig, store: Store, device: str) -> dict[str, Any]:
    """Run one stage in this process: model load apart, images/s, GPU memory and utilisation."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    stage = make_stage(name, config, store)
    start = time.perf_counter()
    stage.setup()
    loaded = time.perf_counter()
    calls: list[int] = []
    grounder = getattr(stage, "grounder", None) if name == "ground" else None
    if grounder is not None and hasattr(grounder, "_forward"):
        forward = grounder._forward  # count the images of each model call (the batch fill)

        def counted(items, captions):
            calls.append(len(items))
            return forward(items, captions)

        grounder._forward = counted
    with Utilisation(device) as util:
        stats = stage.run()
    seconds = time.perf_counter() - loaded
    out = {
        "ok": stats.ok,
        "error": stats.error,
        "load_s": round(loaded - start, 1),
        "seconds": seconds,
        "images_per_s": round(stats.ok / seconds, 2) if seconds else None,
        "gpu_util_pct": util.mean,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if on_gpu(device) else None,
    }
    if calls:
        out["images_per_ground_call"] = round(float(np.mean(calls)), 2)
    if name == "embed":
        rows = pl.from_arrow(stage.output.read(["object_image_embeds"]))
        crops = int(rows["object_image_embeds"].list.len().fill_null(0).sum()) + stats.ok
        out["crops_per_s"] = round(crops / seconds, 1) if seconds else None
    return out


def fresh_store(root: Path, tag: str, images: Path, config: PipelineConfig) -> Store:
    store = Store(root / tag)
    run_stage("ingest", config, store, inputs=[images])
    return store


def variant_rate(root: Path, tag: str, images: Path, config: PipelineConfig, stage: str, device: str) -> dict:
    """One stage's images/s on a fresh data directory (its inputs computed first, untimed)."""
    store = fresh_store(root, tag, images, config)
    for before in MODEL_STAGES[: MODEL_STAGES.index(stage)]:
        run_stage(before, config, store)
    return timed_stage(stage, config, store, device)


def check(root: Path, models: Path, n_images: int, size: str, device: str) -> list[dict[str, Any]]:
    """Every figure of the check (see the module docstring)."""

    device = resolve_device(device)
    built = build_models(models, size)
    if size == "small":
        from pipeline.models.tiny import tiny_clip

        tiny_clip(0)  # the small CLIP's config, registered with open_clip in this process
    root = root / time.strftime("run-%Y%m%d-%H%M%S")  # a fresh data directory: nothing is up to date
    images = root / "images"
    mixed_jpegs(images, n_images)
    config = resolve("paper", _params(smoke_config(built, device)), {"device": device})
    gpu = gpu_name(device)
    label = f"{gpu}, {size} size, {n_images} JPEGs of 1-2 MP"
    figures = []
    store = fresh_store(root, "main", images, config)
    results = {name: timed_stage(name, config, store, device) for name in MODEL_STAGES}
    for name, r in results.items():
        rate = r["crops_per_s"] if name == "embed" else r["images_per_s"]
        target = EMBED_CROPS_TARGET if name == "embed" else TARGETS.get(name)
        unit = "crops/s" if name == "embed" else "images/s"
        on_gpu = device.startswith("cuda")
        figures.append(
            figure(
                f"gpu-check {name} ({label})",
                rate,
                unit,
                f">= {target:g} on an H200" if target else "measured",
                (rate >= target) if (target and on_gpu) else None,
                **{k: v for k, v in r.items() if k not in ("ok", "error", "seconds", "crops_per_s")},
            )
        )
    total = sum(r["seconds"] for r in results.values())
    busiest = max(results.values(), key=lambda r: r["seconds"])
    end_to_end = n_images / total
    figures.append(
        figure(
            f"gpu-check end to end, models loaded ({label})",
            round(end_to_end, 2),
            "images/s",
            ">= 40 on an H200",
            end_to_end >= 40 if device.startswith("cuda") else None,
            busiest_gpu_util_pct=busiest["gpu_util_pct"],
        )
    )
    subset = root / "subset"
    mixed_jpegs(subset, max(4, n_images // 3))
    for batch in (16, 64):
        cfg = _with(config, runtime={"batch_sizes": {"caption": batch}})
        r = variant_rate(root, f"caption-b{batch}", subset, cfg, "caption", device)
        rate = r["images_per_s"]
        figures.append(figure(f"gpu-check caption batch {batch} ({gpu})", rate, "images/s", "measured", None))
    for precision in ("float32", "tf32", "bfloat16"):
        tf32 = precision == "tf32"  # ground.tf32: a knob of the config (in the fingerprint when on)
        cfg = _with(config, ground={"dtype": "float32" if tf32 else precision, "tf32": tf32})
        r = variant_rate(root, f"ground-{precision}", subset, cfg, "ground", device)
        figures.append(
            figure(f"gpu-check ground {precision} ({gpu})", r["images_per_s"], "images/s", "measured", None,
                   images_per_ground_call=r.get("images_per_ground_call"))
        )
    # Bucket padding against none: fuller model calls against the padded pixels they cost
    cfg = _with(config, ground={"pad_multiple": 0})
    r = variant_rate(root, "ground-unpadded", subset, cfg, "ground", device)
    figures.append(
        figure(f"gpu-check ground float32 unpadded ({gpu})", r["images_per_s"], "images/s", "measured", None,
               images_per_ground_call=r.get("images_per_ground_call"))
    )
    for batch in (256, 512, 1024):
        cfg = _with(config, runtime={"batch_sizes": {"embed": batch}})
        r = variant_rate(root, f"embed-b{batch}", subset, cfg, "embed", device)
        rate = r["crops_per_s"]
        figures.append(figure(f"gpu-check embed batch {batch} crops ({gpu})", rate, "crops/s", "measured", None))
    figures.append(dask_against_in_process(root, subset, config, store, small=size == "small"))
    return figures


def dask_against_in_process(
    root: Path, images: Path, config: PipelineConfig, reference: Store, small: bool = False
) -> dict[str, Any]:
    """The subset through every model stage on a local dask cluster (one worker per GPU, or 2 CPU
    workers), its rows against the in-process run's (captions equal, D to float tolerance)."""
    store = fresh_store(root, "dask", images, config)
    with DaskExecutor() as executor:
        workers = executor.n_workers
        if small:  # the small CLIP's config is registered with open_clip per process, as stage_child does
            from pipeline.models.tiny import tiny_clip

            executor.client.run(tiny_clip, 0)
        for name in MODEL_STAGES:
            run_stage(name, config, store, executor=executor)
    ours = {n: pl.from_arrow(make_stage(n, config, store).output.read()).sort("image_id") for n in MODEL_STAGES}
    ids = ours["distance"]["image_id"].to_list()
    theirs = {
        n: pl.from_arrow(make_stage(n, config, reference).output.read()).filter(pl.col("image_id").is_in(ids))
        .sort("image_id")
        for n in MODEL_STAGES
    }
    same_captions = ours["caption"]["caption"].to_list() == theirs["caption"]["caption"].to_list()
    diff = float(
        np.abs(ours["distance"]["d_global"].to_numpy() - theirs["distance"]["d_global"].to_numpy()).max()
    ) if ids and theirs["distance"].height == len(ids) else float("nan")
    ok = same_captions and diff <= 1e-3 and len(ids) == ours["caption"].height
    return figure(
        "gpu-check dask, one worker per GPU, rows against in-process",
        round(diff, 6),
        "max |dD_g|",
        "captions equal, D within 1e-3",
        ok,
        workers=workers,
        images=len(ids),
        same_captions=same_captions,
    )


def _params(config: PipelineConfig) -> dict[str, Any]:
    """The model locations of smoke-paper's config, as params for `resolve`."""
    return {
        "caption": {"model": config.stage("caption").model},
        "ground": {"model": config.stage("ground").model},
        "embed": {"model": config.stage("embed").model, "pretrained": config.stage("embed").pretrained},
    }


def _with(config: PipelineConfig, runtime: dict[str, Any] | None = None, **stages: dict[str, Any]) -> PipelineConfig:
    params = _params(config)
    for name, values in stages.items():
        params[name] = {**params.get(name, {}), **values}
    rt = {"device": config.runtime.device, **(runtime or {})}
    return resolve("paper", params, rt)


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.gpu_check [--size full|small] [--images N] [--device D] [--no-record]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", type=Path, default=Path("data/gpu-check"))
    parser.add_argument("--models-dir", type=Path, default=Path("data/smoke-paper/models"))
    parser.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    start = time.perf_counter()
    figures = check(args.data_dir, args.models_dir, args.images, args.size, args.device)
    figures.append(figure("gpu-check wall clock (build or reuse, every step)", round(time.perf_counter() - start, 1),
                          "s", "under 480 s on an H200", None))
    for f in figures:
        print(f"{f['figure']:<70} {shown(f):>12}  target {f['target']:<28} {verdict(f['ok'])}  {details(f)}")
    print(json.dumps({"figures": len(figures)}))
    if not args.no_record:
        append_markdown(figures, command="`make gpu-check` (`python -m benchmarks.gpu_check`)")


if __name__ == "__main__":
    main()
