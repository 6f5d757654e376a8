"""`make smoke-paper`: the paper's architectures at full size, with random weights, through the
loading path an offline cluster takes.

It builds BLIP-2 OPT-2.7B, Grounding DINO base (Swin-B, BERT-base) and CLIP ViT-L/14 from their
published configuration values into local directories (safetensors weights, config.json, processor
and a tokenizer built offline, exactly what `save_pretrained` leaves and a user copies to a cluster),
points the `paper` profile's `model` fields at them, and runs ingest, caption, ground, embed and
distance on a few realistic JPEGs, each stage in its own process so its peak memory is its own.
It prints seconds per image and peak RSS per stage and appends them to BENCHMARKS.md.

`--size small` builds the same classes with small dimensions (the test of the loading path).
The random weights make the captions and boxes meaningless; only speed, memory and the loading
path are measured. A random OPT never emits its end token, so every caption runs the paper's full
`max_new_tokens` (30): the caption figure is an upper bound (BLIP-2's real captions stop at about 10).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import ROOT, append_markdown, details, figure, peak_mib, realistic_jpegs, run_child
from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.config import PipelineConfig, resolve
from pipeline.engine.devices import resolve_device
from pipeline.engine.errors import UsageError
from pipeline.engine.store import Store
from pipeline.models.tiny import SMALL as TINY_DIMS
from pipeline.models.tiny import seeded, text_ids

log = logging.getLogger(__name__)

STAMP = "complete.json"  # written last: a build that was cut short is built again
MARKER = ".smoke-paper"  # written first: the only directories this module ever deletes carry it
BUILD_VERSION = 2  # bump when the builders change, so an older build in the cache is not reused
MODEL_STAGES = ("caption", "ground", "embed")
STAGES_RUN = ("ingest", *MODEL_STAGES, "distance")
IMAGE_SIZE = (1600, 1000)  # 1.6 MP JPEGs: what a photo collection holds

# Published configuration values (the hub's config.json of each model; transformers' defaults differ
# for OPT, so every dimension is given).
FULL = {
    "blip2": {
        "vision": {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16},
        "qformer": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        "opt": {"hidden_size": 2560, "ffn_dim": 10240, "num_hidden_layers": 32, "num_attention_heads": 32},
        "vocab": 50304,  # Salesforce/blip2-opt-2.7b's text_config (OPT's 50272, grown for `<image>`)
        "query_tokens": 32,
        "image_size": 224,
    },
    "gdino": {
        "swin": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12},
        "bert": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
        "d_model": 256,
        "layers": 6,
        "ffn": 2048,
        "heads": 8,
        "queries": 900,
        "vocab": 30522,  # bert-base-uncased
    },
    "clip": "ViT-L-14-quickgelu",
}
SMALL = {
    "blip2": {
        # The tiny profile's dimensions (OPT names its feed-forward width ffn_dim).
        "vision": TINY_DIMS,
        "qformer": TINY_DIMS,
        "opt": {("ffn_dim" if k == "intermediate_size" else k): v for k, v in TINY_DIMS.items()},
        "vocab": 1000,
        "query_tokens": 4,
        "image_size": 224,
        # A wide init: a small random OPT at the usual 0.02 repeats one token or stops at once.
        "init_std": 1.0,
    },
    "gdino": {
        "swin": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 7},
        "bert": {**TINY_DIMS, "num_hidden_layers": 1},  # the tiny profile's BERT
        "d_model": 32,
        "layers": 2,  # at least 2: the box heads of decoder layers 1.. are tied to layer 0's
        "ffn": 64,
        "heads": 4,
        "queries": 50,
        "vocab": 2000,  # above 1029: Grounding DINO hard-codes bert-base-uncased's ids up to "?"
    },
    "clip": "item-tiny-clip",
}
SIZES = {"full": FULL, "small": SMALL}


# --- the vocabularies ------------------------------------------------------------------------------

# Pronounceable made-up words of two or three consonant-vowel syllables. The random OPT can emit any
# id, so every id past the byte alphabet decodes to one of these, space-prefixed: captions are words
# the grounder's BERT tokenizer knows (whole, or as syllable pieces), not one unknown blob, and the
# ground and embed stages see phrases the way they would with a real caption.
SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def pseudo_words(n: int) -> list[str]:
    """The first `n` made-up words, two-syllable ones first; deterministic."""
    words = itertools.chain(
        ("".join(p) for p in itertools.product(SYLLABLES, repeat=2)),
        ("".join(p) for p in itertools.product(SYLLABLES, repeat=3)),
    )
    return list(itertools.islice(words, n))


def opt_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with OPT's special tokens and exactly `vocab_size` entries (the
    model's embedding size, so every id the random model generates decodes), built offline."""
    from tokenizers import models, pre_tokenizers

    from pipeline.models.tiny import OPT_SPECIALS, byte_level, opt_tokenizer_of

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = list(dict.fromkeys([*OPT_SPECIALS, *alphabet]))
    tokens += ["Ġ" + w for w in pseudo_words(vocab_size - len(tokens))]  # Ġ: the byte-level space
    vocab = {t: i for i, t in enumerate(tokens)}
    return opt_tokenizer_of(byte_level(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")))


def bert_vocab(size: int) -> dict[str, int]:
    """A WordPiece vocabulary of `size` entries: bert-base-uncased's special ids (which Grounding DINO
    hard-codes), the syllables as word starts and `##` pieces (so every made-up word tokenizes), then
    as many of OPT's made-up words whole as fit."""
    from pipeline.models.tiny import bert_vocab as base_vocab

    vocab = base_vocab()
    extra = [*SYLLABLES, *(f"##{s}" for s in SYLLABLES), *pseudo_words(size)]
    for token in dict.fromkeys(extra):
        if len(vocab) >= size:
            break
        vocab.setdefault(token, len(vocab))
    return vocab


# --- building the models --------------------------------------------------------------------------


def build_blip2(out: Path, size: dict[str, Any]) -> None:
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    s = size["blip2"]
    tokenizer = opt_tokenizer(s["vocab"])
    vision = Blip2VisionConfig(**s["vision"], image_size=s["image_size"], patch_size=14, qkv_bias=True)
    qformer = Blip2QFormerConfig(
        **s["qformer"], cross_attention_frequency=2, encoder_hidden_size=s["vision"]["hidden_size"]
    )
    text = OPTConfig(
        **s["opt"],
        **text_ids(tokenizer),  # the vocabulary is exactly s["vocab"] entries
        max_position_embeddings=2048,
        word_embed_proj_dim=s["opt"]["hidden_size"],
        **({"init_std": s["init_std"]} if "init_std" in s else {}),
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=s["query_tokens"],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        **({"initializer_range": s["init_std"]} if "init_std" in s else {}),
    )
    _save(Blip2ForConditionalGeneration, config, torch.bfloat16, out)
    image_processor = BlipImageProcessor(
        size={"height": s["image_size"], "width": s["image_size"]},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=s["query_tokens"]
    ).save_pretrained(out)


def build_grounding_dino(out: Path, size: dict[str, Any]) -> None:
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    s = size["gdino"]
    # transformers 5 ignores `vocab_file=` for BertTokenizer; `vocab=` (a dict) is honoured.
    tokenizer = BertTokenizer(vocab=bert_vocab(s["vocab"]), do_lower_case=True)
    backbone = SwinConfig(**s["swin"], image_size=384, patch_size=4, out_indices=[2, 3, 4])
    text = BertConfig(**s["bert"], vocab_size=s["vocab"], max_position_embeddings=512, pad_token_id=0)
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=s["d_model"],
        encoder_layers=s["layers"],
        decoder_layers=s["layers"],
        encoder_ffn_dim=s["ffn"],
        decoder_ffn_dim=s["ffn"],
        encoder_attention_heads=s["heads"],
        decoder_attention_heads=s["heads"],
        encoder_n_points=4,
        decoder_n_points=4,
        num_feature_levels=4,
        num_queries=s["queries"],
        max_text_len=256,
    )
    _save(GroundingDinoForObjectDetection, config, torch.float32, out)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer).save_pretrained(out)


def build_clip(out: Path, size: dict[str, Any]) -> Path:
    """The open_clip model's weights as one safetensors file (what `embed.pretrained` takes)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from pipeline.models.tiny import tiny_clip

    name = size["clip"]
    if name == SMALL["clip"]:
        tiny_clip(0)  # registers its config with open_clip
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _save(model_class: Any, config: Any, dtype: Any, out: Path) -> None:
    """Random weights made straight in `dtype` (BLIP-2 in bf16 needs 7.5 GB, not 15), saved as
    safetensors; the model is freed before the next is made."""
    import gc

    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = seeded(model_class, config, 0)  # the same weights every build: a rerun measures the same captions
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out, safe_serialization=True)
    del model
    gc.collect()


def _check_claimable(directory: Path) -> None:
    """Refuse a non-empty `directory` that this module did not make: a mistyped --models-dir or
    --data-dir (a real model folder, the project's data) is an error, never wiped."""
    ours = (directory / MARKER).exists() or (directory / STAMP).exists()
    if directory.exists() and any(directory.iterdir()) and not ours:
        raise UsageError(f"{directory} is not empty and was not made by smoke-paper: refusing to delete it")


def _claim(directory: Path) -> None:
    """Empty `directory` (ours, see `_check_claimable`) for a new build or run, and mark it ours."""
    _check_claimable(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / MARKER).touch()


def _complete_build(models_dir: Path, size: str) -> dict[str, Any] | None:
    stamp = models_dir / STAMP
    if not stamp.exists():
        return None
    built = json.loads(stamp.read_text())
    return built if built.get("size") == size and built.get("version") == BUILD_VERSION else None


def build_models(models_dir: Path, size: str = "full") -> dict[str, Any]:
    """Build the three models into `models_dir` unless a complete build of this size is there;
    returns {"blip2": dir, "grounding_dino": dir, "clip": safetensors file, "seconds", "gib",
    "peak_mib"} as the stamp records it. `peak_mib` is this process's: run it in a fresh one
    (`smoke-build`) to measure the build alone."""
    built = _complete_build(models_dir, size)
    if built is not None:
        return built
    _claim(models_dir)
    start = time.perf_counter()
    spec = SIZES[size]
    build_blip2(models_dir / "blip2", spec)
    build_grounding_dino(models_dir / "grounding-dino", spec)
    clip = build_clip(models_dir / "clip", spec)
    built = {
        "version": BUILD_VERSION,
        "size": size,
        "blip2": str(models_dir / "blip2"),
        "grounding_dino": str(models_dir / "grounding-dino"),
        "clip": str(clip),
        "seconds": round(time.perf_counter() - start, 1),
        "gib": round(sum(f.stat().st_size for f in models_dir.rglob("*") if f.is_file()) / 2**30, 2),
        "peak_mib": round(peak_mib()),
    }
    (models_dir / STAMP).write_text(json.dumps(built))
    return built


def build_child(models_dir: str, size: str) -> None:
    """Build (or find) the models in this fresh process and print the stamp, with `reused`."""
    reused = _complete_build(Path(models_dir), size) is not None
    print(json.dumps({**build_models(Path(models_dir), size), "reused": reused}))


# --- running the paper profile on them -----------------------------------------------------------


def smoke_config(built: dict[str, Any], device: str) -> PipelineConfig:
    """The `paper` profile with only the model locations changed to the local builds (and, for the
    small build, the CLIP architecture its weights belong to)."""
    params: dict[str, dict[str, Any]] = {
        "caption": {"model": built["blip2"]},
        "ground": {"model": built["grounding_dino"]},
        "embed": {"pretrained": built["clip"]},
    }
    if built["size"] == "small":
        params["embed"]["model"] = SMALL["clip"]
    # batch_size is a speed setting (never in a fingerprint): one batch for the default four images.
    return resolve("paper", params, {"device": device, "batch_size": 4})


def stage_child(stage: str, data_dir: str, stamp: str, device: str) -> None:
    """Run one stage in this fresh process; print its rows, seconds (in all, and loading the model),
    and peak RSS."""
    built = json.loads(Path(stamp).read_text())
    if built["size"] == "small":
        from pipeline.models.tiny import tiny_clip

        tiny_clip(0)  # the small CLIP's config, registered with open_clip in this process too
    config, store = smoke_config(built, device), Store(data_dir)
    options = {"inputs": [Path(data_dir) / "images"]} if stage == "ingest" else {}
    start = time.perf_counter()
    if stage in MODEL_STAGES:
        make_stage(stage, config, store).setup()  # loads the model once per process: the run reuses it
    loaded = time.perf_counter()
    stats = run_stage(stage, config, store, **options)
    end = time.perf_counter()
    result = {
        "ok": stats.ok,
        "error": stats.error,
        "seconds": end - start,
        "load_s": loaded - start,
        "peak_mib": peak_mib(),
        **stage_details(stage, config, store),
    }
    print(json.dumps(result))


def stage_details(stage: str, config: PipelineConfig, store: Store) -> dict[str, float]:
    """What the stage's time depends on besides the model: caption length, objects per image."""
    if stage not in ("caption", "ground"):
        return {}
    rows = store.features(stage, make_stage(stage, config, store).fingerprint).read()
    if stage == "caption":
        words = [len(c.split()) for c in rows.column("caption").to_pylist() if c]
        return {"words_per_caption": round(sum(words) / max(len(words), 1), 1)}
    objects = [len(o) for o in rows.column("objects").to_pylist() if o is not None]
    return {"objects_per_image": round(sum(objects) / max(len(objects), 1), 1)}


def run_smoke(
    data_dir: Path,
    models_dir: Path,
    n_images: int = 4,
    device: str = "auto",
    size: str = "full",
    keep: bool = True,
) -> list[dict[str, Any]]:
    """Build (or reuse) the models, run every stage in its own process on `n_images` fresh JPEGs;
    the figures. `keep=False` deletes the built models afterwards."""
    if n_images < 1:
        raise UsageError("--images must be >= 1")
    _check_claimable(data_dir)  # both refused here, before minutes of building
    if _complete_build(models_dir, size) is None:
        _check_claimable(models_dir)
    built = run_child("smoke-build", models_dir, size, module="benchmarks.smoke")
    log.info(
        "models in %s (%s GiB, %s in %s s)",
        models_dir,
        built["gib"],
        "built before" if built["reused"] else "built",
        built["seconds"],
    )
    _claim(data_dir)
    realistic_jpegs(data_dir / "images", n_images, IMAGE_SIZE)
    where = resolve_device(device)
    label = f"{size} size, random weights, {n_images} JPEGs of {IMAGE_SIZE[0] * IMAGE_SIZE[1] / 1e6:.1f} MP, {where}"
    figures, start = [], time.perf_counter()
    for stage in STAGES_RUN:
        log.info("smoke-paper: %s", stage)
        result = run_child("smoke-stage", data_dir, stage, str(models_dir / STAMP), device, module="benchmarks.smoke")
        if result["ok"] != n_images:
            raise RuntimeError(f"{stage}: {result['ok']} ok rows of {n_images} ({result['error']} errors)")
        # Per image without the model load: the rate a long run settles at (the load, once per
        # process, is in the details and in the total below).
        per_image = (result["seconds"] - result["load_s"]) / n_images
        extra = {k: v for k, v in result.items() if k not in ("ok", "error", "seconds", "load_s", "peak_mib")}
        if stage in MODEL_STAGES:
            extra["load_s"] = round(result["load_s"], 1)
        figures.append(
            figure(
                f"smoke-paper {stage} ({label})",
                round(per_image, 2),
                "s/image",
                "runs; measured",
                True,
                peak_mib=round(result["peak_mib"]),
                **extra,
            )
        )
    figures.append(
        figure(
            f"smoke-paper all stages ({label})",
            round(time.perf_counter() - start, 1),
            "s",
            "measured (wall clock: process starts and model loads included)",
            None,
        )
    )
    figures.append(
        figure(
            f"smoke-paper model build ({size} size)",
            built["seconds"],
            "s",
            "measured" + (" (an earlier build, reused)" if built["reused"] else ""),
            None,
            disk_gib=built["gib"],
            peak_mib=built.get("peak_mib", "-"),
        )
    )
    if not keep:
        shutil.rmtree(models_dir)  # ours: smoke-build claimed it (or found its own stamp there)
    return figures


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # The children run_child starts: KIND ROOT ARGS... (run_child's order).
    if argv[:1] == ["smoke-build"]:
        build_child(*argv[1:3])
        return
    if argv[:1] == ["smoke-stage"]:
        data_dir, stage, stamp, device = argv[1:5]
        stage_child(stage, data_dir, stamp, device)
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.smoke", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "data" / "smoke-paper" / "run",
        help="the run's images and features (emptied first)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=ROOT / "data" / "smoke-paper" / "models",
        help="the built models (reused when complete)",
    )
    parser.add_argument("--images", type=int, default=4, help="how many 1.6 MP JPEGs to run")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="full", help="small: the same classes, tiny dimensions"
    )
    parser.add_argument(
        "--keep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the built models for the next run (--no-keep frees their disk)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        figures = run_smoke(args.data_dir, args.models_dir, args.images, args.device, args.size, args.keep)
    except UsageError as e:
        parser.exit(2, f"error: {e}\n")
    for f in figures:
        print(f"{f['figure']:<80} {f['value']:>8} {f['unit']:<8} {details(f)}")
    if not args.no_record:
        append_markdown(figures, command="`make smoke-paper` (`python -m benchmarks.smoke`)")


if __name__ == "__main__":
    main()
