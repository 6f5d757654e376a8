"""Small tokenizers and configurations for the `tiny` profile: built in code, offline, seeded.

The tiny models are the same classes as the paper's models, shrunk, with random weights. Their
outputs are deterministic functions of the input image, which is all the tests and the demo need;
their captions and boxes are not meaningful.
"""

from __future__ import annotations

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


def byte_level_bpe(vocab_size: int = 400):
    """An OPT-style byte-level BPE tokenizer (BOS `</s>`, pad `<pad>`) trained on the tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>", "<image>"])
    tok.train_from_iterator(caption_corpus(), trainer)
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
