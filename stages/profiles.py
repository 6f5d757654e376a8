"""The built-in profiles: named sets of overrides of the stages' config defaults (the dataclass
defaults in each stage module are the paper's settings). `tiny` builds the same model classes from
small configs with random weights, offline, for tests, CI and the demo."""

from pipeline.engine.config import PROFILES

PROFILES.register("paper")({})  # the dataclass defaults are the paper's settings
# The CLIP ablation of Fig. 8: the paper's pipeline with another open_clip model (OpenAI weights).
PROFILES.register("clip-rn50")({"embed": {"model": "RN50-quickgelu", "pretrained": "openai"}})
PROFILES.register("clip-b16")({"embed": {"model": "ViT-B-16-quickgelu", "pretrained": "openai"}})
# The captioner ablation of Fig. 7: BLIP, and LLaVA asked the paper's one-sentence caption prompt.
PROFILES.register("blip")({"caption": {"backend": "blip", "model": "Salesforce/blip-image-captioning-large"}})
PROFILES.register("llava")({"caption": {"backend": "llava", "model": "llava-hf/llava-1.5-7b-hf"}})

PROFILES.register("tiny")(
    {
        "caption": {"model": "tiny/blip2", "dtype": "float32", "max_new_tokens": 8, "min_new_tokens": 3},
        # Thresholds for the tiny Grounding DINO's scores (pipeline/models/tiny.py, vary_grounding): on
        # the demo's images they leave 0 to 7 objects per image, each phrase a few words of the caption,
        # so some images keep more objects than max_objects (ranking matters) and some none (n = 0).
        "ground": {
            "model": "tiny/grounding-dino",
            "dtype": "float32",
            "box_threshold": 0.89,
            "text_threshold": 0.75,
            "max_objects": 3,
            "shortest_edge": 224,
            "longest_edge": 320,
        },
        "embed": {"model": "tiny/clip", "pretrained": "none", "dtype": "float32"},
        "fit": {"hidden_dim": 64, "batch_size": 16},  # small sets need more steps per epoch
    }
)
# The paper's settings on the tiny models (thresholds 0.35/0.25, 800/1333 resize, bf16, 16 objects,
# 30 new tokens): every branch a real run takes, offline, for the tests.
PROFILES.register("tiny-paper")(
    {
        "caption": {"model": "tiny/blip2", "min_new_tokens": 3},
        "ground": {"model": "tiny/grounding-dino"},
        "embed": {"model": "tiny/clip", "pretrained": "none"},
        "fit": {"hidden_dim": 64, "batch_size": 16},
    }
)
