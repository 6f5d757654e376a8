"""Small tokenizers and configurations for the `tiny` profile: built in code, offline, seeded.

The tiny models are the same classes as the paper's models, shrunk, with random weights. Their
outputs are deterministic functions of the input image; their captions and boxes are not
meaningful, but they are varied: a tiny caption is words of WORDS, and the tiny Grounding DINO finds
objects with distinct phrases (words of the caption), scores and boxes, a few per image or none
(`vary_grounding`), so that the tests can see each rule of grounding and embedding at work.

A change to any build here changes rows: bump `pipeline.engine.config.TINY_BUILD` with it (it is in
the fingerprint of every stage that runs a tiny model, so older rows are never reused).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.engine.registry import Registry

# Builders of the tiny models by backend name: seed -> (model, processor) for transformers backends,
# seed -> open_clip model name for CLIP. The backends ask here for names starting with `tiny/`.
TINY: Registry[Callable[[int], Any]] = Registry("tiny model")

# A small English vocabulary: the tiny tokenizers must see words, not only unknown tokens.
WORDS = (
    "a an the of on in at with and to is are two three man woman people person child dog cat bird horse "
    "car bus truck bicycle boat train plane street road park beach sea sky tree trees grass field mountain "
    "house building room table chair bed window door wall floor kitchen food plate cup bottle phone book "
    "red blue green yellow black white brown gray orange pink large small old young standing sitting "
    "walking running holding wearing looking near next front top side group photo picture image view "
    "water snow sun light dark night day city sign shirt hat face hand hair background close up "
    "flowers flower ball field game player team laptop computer screen pizza cake sandwich umbrella"
).split()


def caption_corpus() -> list[str]:
    """Sentences for training the tiny byte-level BPE (ASCII only, so every token decodes to text)."""
    return [" ".join(WORDS[i : i + 7]) for i in range(0, len(WORDS), 3)] * 4


OPT_SPECIALS = ["<pad>", "</s>", "<unk>", "<image>"]


def byte_level(model: Any) -> Any:
    """A `tokenizers` Tokenizer around `model` with GPT-2/OPT's byte-level pre-tokenizer and decoder."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers

    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def opt_tokenizer_of(tok: Any) -> Any:
    """`tok` (holding OPT_SPECIALS) as OPT's fast tokenizer: BOS `</s>` first, pad `<pad>`, `<image>`."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A $B", special_tokens=[("</s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def byte_level_bpe(vocab_size: int = 400):
    """An OPT-style byte-level BPE tokenizer (BOS `</s>`, pad `<pad>`) trained on the tiny corpus."""
    from tokenizers import models, trainers

    tok = byte_level(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=OPT_SPECIALS, show_progress=False)
    tok.train_from_iterator(caption_corpus(), trainer)
    return opt_tokenizer_of(tok)


def word_level():
    """An OPT-style tokenizer (BOS `</s>`, pad `<pad>`) whose every token is one word of WORDS with its
    leading space, as byte-level BPE writes it ("Ġdog"): whatever a random model generates decodes to
    words separated by spaces, each a word of the tiny BERT vocabulary, so grounding sees real words
    and its phrases are words of the caption."""
    from tokenizers import models, pre_tokenizers

    vocab = {t: i for i, t in enumerate([*OPT_SPECIALS, *(f"\u0120{w}" for w in dict.fromkeys(WORDS))])}
    tok = byte_level(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    return opt_tokenizer_of(tok)


# Grounding DINO hard-codes the delimiter ids of bert-base-uncased ([CLS] 101, [SEP] 102, "." 1012,
# "?" 1029) in a buffer that is not saved with the weights, and assumes [PAD] = 0: a small vocabulary
# must keep that layout or phrase splitting is silently wrong.
BERT_FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def bert_vocab() -> dict[str, int]:
    """A WordPiece vocabulary with bert-base-uncased's special ids and the tiny word list."""
    content = list(
        dict.fromkeys(
            [
                *"!\"#$%&'()*+,-/:;<=>@[\\]^_`{|}~",
                *"0123456789abcdefghijklmnopqrstuvwxyz",
                *WORDS,
                "##s",
                "##es",
                "##ed",
                "##ing",
                "##er",
                "##ly",
                "##y",
                # every letter as a word piece: any ASCII word the tiny captioner makes tokenizes to
                # pieces, never to [UNK], so phrases are words of the caption, as with BERT's vocabulary
                *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"),
            ]
        )
    )
    content = [t for t in content if t not in BERT_FIXED_IDS]
    id_to_token = {i: t for t, i in BERT_FIXED_IDS.items()}
    free = (i for i in range(104, 10**6) if i not in id_to_token)
    for token in content:
        id_to_token[next(free)] = token
    size = max(id_to_token) + 1
    unused = (f"[unused{n}]" for n in range(size))
    return {id_to_token.get(i) or next(unused): i for i in range(size)}


CLIP_CONFIG = {
    "embed_dim": 768,  # the paper's width, so tiny rows have the same shape as real ones
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


# The width and depth of the tiny transformers (vision towers, Q-Former, text models).
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def small_vit(config_class: type, **extra: Any) -> Any:
    """A SMALL vision tower's config: 64-pixel images in 16-pixel patches."""
    return config_class(**SMALL, image_size=64, patch_size=16, **extra)


def text_ids(tokenizer: Any, **overrides: int) -> dict[str, int]:
    """A text config's vocabulary size and special-token ids, as its tokenizer has them."""
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return {"vocab_size": len(tokenizer), **ids, "pad_token_id": tokenizer.pad_token_id, **overrides}


def bert_tokenizer() -> Any:
    """A WordPiece tokenizer over `bert_vocab()` (bert-base-uncased's special ids), lower-casing."""
    from transformers import BertTokenizer

    # transformers 5 ignores `vocab_file=` here; `vocab=` (a dict) is honoured.
    return BertTokenizer(vocab=bert_vocab(), do_lower_case=True)


def bert_config(tokenizer: Any) -> Any:
    """A one-layer BERT text encoder over `tokenizer` (Grounding DINO's: [PAD] = 0, 256 positions)."""
    from transformers import BertConfig

    small = {**SMALL, "num_hidden_layers": 1}
    return BertConfig(vocab_size=len(tokenizer), **small, max_position_embeddings=256, pad_token_id=0)


def seeded(model_class: type, config: Any, seed: int) -> Any:
    """`model_class(config)` in eval mode, its random init drawn from `torch.manual_seed(seed)`."""
    import torch

    torch.manual_seed(seed)
    return model_class(config).eval()


@TINY.register("blip2")
def tiny_blip2(seed: int):
    """A small BLIP-2 (ViT + Q-Former + OPT) with seeded random weights and its processor, offline."""
    import transformers

    tokenizer = word_level()
    n_query = 4
    vision = small_vit(transformers.Blip2VisionConfig)
    qformer = transformers.Blip2QFormerConfig(**SMALL, encoder_hidden_size=32, vocab_size=len(tokenizer))
    # A wide initialisation makes random captions depend on the image instead of one repeated token.
    opt = {"hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 64, "num_attention_heads": 2}  # OPT's names
    text = transformers.OPTConfig(
        **text_ids(tokenizer), **opt, max_position_embeddings=128, word_embed_proj_dim=32, init_std=1.0
    )
    config = transformers.Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=n_query,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        initializer_range=1.0,
    )
    model = seeded(transformers.Blip2ForConditionalGeneration, config, seed)
    image_processor = transformers.BlipImageProcessor(
        size={"height": 64, "width": 64},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = transformers.Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=n_query
    )
    return model, processor


@TINY.register("blip")
def tiny_blip(seed: int):
    """A small BLIP (ViT + BERT decoder, random seeded weights) and its processor, offline."""
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *dict.fromkeys(WORDS)]
    tokenizer = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    sep = tokenizer.sep_token_id  # BLIP's text decoder ends a caption with [SEP]
    text = transformers.BlipTextConfig(
        **SMALL,
        **text_ids(tokenizer, eos_token_id=sep),
        sep_token_id=sep,
        encoder_hidden_size=32,
        max_position_embeddings=64,
    )
    vision = small_vit(transformers.BlipVisionConfig)
    config = transformers.BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    model = seeded(transformers.BlipForConditionalGeneration, config, seed)
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer
    )
    return model, processor


@TINY.register("llava")
def tiny_llava(seed: int):
    """A small LLaVA (CLIP vision tower + Llama, random seeded weights) and its processor, offline."""
    import transformers

    tokenizer = byte_level_bpe()
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    vision = small_vit(transformers.CLIPVisionConfig, projection_dim=32)
    text = transformers.LlamaConfig(
        **SMALL, **text_ids(tokenizer), num_key_value_heads=2, max_position_embeddings=256, initializer_range=1.0
    )
    config = transformers.LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = seeded(transformers.LlavaForConditionalGeneration, config, seed)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return model, processor


@TINY.register("grounding-dino")
def tiny_grounding_dino(seed: int):
    """A small Grounding DINO (Swin + BERT, random seeded weights) and its processor, built offline."""
    import transformers

    tokenizer = bert_tokenizer()
    backbone = transformers.SwinConfig(
        image_size=224,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        mlp_ratio=2.0,
        out_indices=[2, 3, 4],
    )
    config = transformers.GroundingDinoConfig(
        backbone_config=backbone,
        text_config=bert_config(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_n_points=2,
        decoder_n_points=2,
        num_feature_levels=4,
        num_queries=50,
        max_text_len=256,
        dropout=0.0,
        fusion_droppath=0.0,
    )
    model = vary_grounding(seeded(transformers.GroundingDinoForObjectDetection, config, seed))
    processor = transformers.GroundingDinoProcessor(
        image_processor=transformers.GroundingDinoImageProcessor(), tokenizer=tokenizer
    )
    return model, processor


# The tiny Grounding DINO's logit scale and the tiny profile's thresholds (stages/profiles.py) go together.
GROUNDING_LOGIT_SCALE = 0.15


def vary_grounding(model: Any) -> Any:
    """Make a random Grounding DINO's objects differ from one another, as a trained one's do.

    With its default init every token logit is about +-6 (so every score is 1.0 and every phrase
    the whole caption) and the box head's deltas are zero (so every box is one of the encoder's
    square anchors). Scaling the text features the logits are taken against (the last text-enhancer
    layer's LayerNorm) brings the logits to about +-1: scores spread below 1 and each object's phrase
    is the caption tokens above text_threshold, a different subset per object. A box head
    initialised at unit gain moves each box off its anchor, in size, aspect and position. Then
    ranking, max_objects, both thresholds, the empty-phrase rule and the pairing of crops and
    phrases all change rows when they are wrong (tests/stages/test_reference_use.py).
    """
    import torch

    with torch.no_grad():
        norm = model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after
        norm.weight.mul_(GROUNDING_LOGIT_SCALE)
        norm.bias.mul_(GROUNDING_LOGIT_SCALE)
        for layer in model.bbox_embed[0].layers:  # shared by every decoder layer (tied)
            layer.weight.normal_(0.0, layer.in_features**-0.5)
            layer.bias.zero_()
    return model


TINY_CLIP_NAME = "item-tiny-clip"


@TINY.register("clip")
def tiny_clip(seed: int) -> str:
    """Register the tiny CLIP's config with open_clip and seed its random init; returns its model name."""
    import open_clip
    import torch
    from open_clip.factory import _MODEL_CONFIGS

    if TINY_CLIP_NAME not in _MODEL_CONFIGS:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"{TINY_CLIP_NAME}.json"
            path.write_text(json.dumps(CLIP_CONFIG))
            open_clip.add_model_config(path)
    torch.manual_seed(seed)
    return TINY_CLIP_NAME


def build_tiny(backend: str, seed: int) -> Any:
    """The tiny model of a backend (a `tiny/...` model name in a profile), built offline."""
    return TINY.get(backend)(seed)
