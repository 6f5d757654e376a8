"""`make smoke-paper`: the paper's architectures at full size, with random weights, through the
loading path an offline cluster takes.

It builds BLIP-2 OPT-2.7B, Grounding DINO base (Swin-B, BERT-base) and CLIP ViT-L/14 from their
published configuration values into local directories (safetensors weights, config.json, processor
and a tokenizer built offline, exactly what `save_pretrained` leaves and a user copies to a cluster),
points the `paper` profile's `model` fields at them, and runs ingest, caption, ground, embed and
distance on a few realistic JPEGs, each model stage in its own process so its peak memory is its own.
It prints seconds per image and peak RSS per stage and appends them to BENCHMARKS.md.

`--size small` builds the same classes with small dimensions (the test of the loading path).
The random weights make the captions and boxes meaningless; only speed, memory and the loading
path are measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.app.bench import ROOT, append_markdown, figure, realistic_jpegs, run_child
from pipeline.app.runner import run_stage
from pipeline.engine.config import PipelineConfig, resolve
from pipeline.engine.devices import resolve_device
from pipeline.engine.store import Store

log = logging.getLogger(__name__)

STAMP = "complete.json"  # written last: a build that was cut short is built again
MODEL_STAGES = ("caption", "ground", "embed")

# Published configuration values (the hub's config.json of each model).
FULL = {
    "blip2": {
        "vision": {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16},
        "qformer": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        "opt": {"hidden_size": 2560, "ffn_dim": 10240, "num_hidden_layers": 32, "num_attention_heads": 32},
        "vocab": 50272,
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
        "vocab": 30522,
    },
    "clip": "ViT-L-14-quickgelu",
}
SMALL = {
    "blip2": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "qformer": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "opt": {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "vocab": 1000,
        "query_tokens": 4,
        "image_size": 224,
    },
    "gdino": {
        "swin": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 7},
        "bert": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "d_model": 32,
        "layers": 2,  # at least 2: the box heads of decoder layers 1.. are tied to layer 0's
        "ffn": 64,
        "heads": 4,
        "queries": 50,
        "vocab": 2000,
    },
    "clip": "item-tiny-clip",
}
SIZES = {"full": FULL, "small": SMALL}


# --- building the models --------------------------------------------------------------------------


def opt_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with OPT's special tokens, `vocab_size` entries (the model's
    embedding size, so every id the random model generates decodes), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<image>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *alphabet]))}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})  # filler words for unused ids
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


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
        vocab_size=s["vocab"],
        max_position_embeddings=2048,
        word_embed_proj_dim=s["opt"]["hidden_size"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=s["query_tokens"],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
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

    from pipeline.models.tiny import bert_vocab

    s = size["gdino"]
    vocab = bert_vocab()  # bert-base-uncased's special ids, which Grounding DINO hard-codes
    vocab.update({f"[unused{i}]": i for i in range(len(vocab), s["vocab"])})
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
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
    from safetensors.torch import save_file

    from pipeline.models.tiny import tiny_clip

    name = size["clip"]
    if name == "item-tiny-clip":
        tiny_clip(0)  # registers its config with open_clip
    model = open_clip.create_model(name, pretrained=None)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _save(model_class: Any, config: Any, dtype: Any, out: Path) -> None:
    """Random weights straight in `dtype` (BLIP-2 in bf16 needs 7.7 GB, not 15), saved as safetensors."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = model_class(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out, safe_serialization=True)
    del model


def build_models(models_dir: Path, size: str = "full") -> dict[str, Any]:
    """Build the three models into `models_dir` unless a complete build of this size is there;
    returns {"blip2": dir, "grounding_dino": dir, "clip": safetensors file, "seconds": build time}."""
    stamp = models_dir / STAMP
    if stamp.exists():
        built = json.loads(stamp.read_text())
        if built.get("size") == size:
            return built
    shutil.rmtree(models_dir, ignore_errors=True)
    start = time.perf_counter()
    spec = SIZES[size]
    build_blip2(models_dir / "blip2", spec)
    build_grounding_dino(models_dir / "grounding-dino", spec)
    clip = build_clip(models_dir / "clip", spec)
    built = {
        "size": size,
        "blip2": str(models_dir / "blip2"),
        "grounding_dino": str(models_dir / "grounding-dino"),
        "clip": str(clip),
        "seconds": round(time.perf_counter() - start, 1),
        "gib": round(sum(f.stat().st_size for f in models_dir.rglob("*") if f.is_file()) / 2**30, 2),
    }
    stamp.write_text(json.dumps(built))
    return built


# --- running the paper profile on them -----------------------------------------------------------


def smoke_config(built: dict[str, Any], device: str, size: str) -> PipelineConfig:
    """The `paper` profile with only the model locations changed to the local builds."""
    params = {
        "caption": {"model": built["blip2"]},
        "ground": {"model": built["grounding_dino"]},
        "embed": {"pretrained": built["clip"]},
    }
    if size == "small":
        params["embed"]["model"] = SMALL["clip"]
    return resolve("paper", params, {"device": device, "batch_size": 4})


def stage_child(stage: str, data_dir: str, built_json: str, device: str) -> None:
    """Run one stage in this fresh process; print its rows, seconds and peak RSS as JSON."""
    from pipeline.app.bench import _peak_mib

    built = json.loads(Path(built_json).read_text())
    if built["size"] == "small":
        from pipeline.models.tiny import tiny_clip

        tiny_clip(0)  # the small CLIP's config, registered with open_clip in this process too
    start = time.perf_counter()
    stats = run_stage(stage, smoke_config(built, device, built["size"]), Store(data_dir))
    print(
        json.dumps(
            {"ok": stats.ok, "error": stats.error, "seconds": time.perf_counter() - start, "peak_mib": _peak_mib()}
        )
    )


def run_smoke(
    data_dir: Path, models_dir: Path, n_images: int = 4, device: str = "auto", size: str = "full"
) -> list[dict[str, Any]]:
    built = build_models(models_dir, size)
    log.info("models in %s (%s GiB, built in %s s)", models_dir, built["gib"], built["seconds"])
    shutil.rmtree(data_dir, ignore_errors=True)
    realistic_jpegs(data_dir / "images", n_images)
    config = smoke_config(built, device, size)
    run_stage("ingest", config, Store(data_dir), inputs=[data_dir / "images"])
    figures = []
    where = resolve_device(device)
    for stage in (*MODEL_STAGES, "distance"):
        result = run_child("smoke-stage", data_dir, stage, str(models_dir / STAMP), device, module="pipeline.app.smoke")
        if result["ok"] != n_images:
            raise RuntimeError(f"{stage}: {result['ok']} ok rows of {n_images} ({result['error']} errors)")
        figures.append(
            figure(
                f"smoke-paper {stage} ({size} size, random weights, {n_images} JPEGs of 1.6 MP, {where})",
                round(result["seconds"] / n_images, 2),
                "s/image",
                "runs; measured",
                True,
                peak_mib=round(result["peak_mib"]),
            )
        )
    figures.append(
        figure(
            f"smoke-paper model build ({size} size)",
            built["seconds"],
            "s",
            "measured",
            None,
            disk_gib=built["gib"],
        )
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["smoke-stage"]:  # smoke-stage DATA_DIR STAGE BUILT_JSON DEVICE (run_child's order)
        data_dir, stage, built_json, device = argv[1:5]
        stage_child(stage, data_dir, built_json, device)
        return
    parser = argparse.ArgumentParser(prog="python -m pipeline.app.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "smoke-paper" / "run")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "data" / "smoke-paper" / "models")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    figures = run_smoke(args.data_dir, args.models_dir, args.images, args.device, args.size)
    for f in figures:
        print(f"{f['figure']:<90} {f['value']} {f['unit']}  peak {f.get('peak_mib', '-')} MiB")
    if not args.no_record:
        append_markdown(figures, command="`make smoke-paper` (`python -m pipeline.app.smoke`)")


if __name__ == "__main__":
    main()
