"""Captioners: image -> text through transformers: BLIP-2 (the paper's), BLIP and LLaVA (Fig. 7)."""

from __future__ import annotations

from typing import Any

from pipeline.models import CAPTIONERS, inference, to_device
from pipeline.models.base import TransformersBackend
from pipeline.models.settings import CaptionSettings


class Pixels:
    """An image processor's pixels for one image (picklable: the processor, not the model)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image) -> Any:
        return self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]


class TransformersCaptioner(TransformersBackend):
    """A transformers image-to-text model, greedy or beam generation, batched.

    Subclasses name the model class (their tiny build is `pipeline.models.tiny`'s under the same name)
    and how the prompt is written.
    """

    cfg: CaptionSettings
    stage = "caption"
    reads = "image"

    def prompt(self) -> str | None:
        return self.cfg.prompt

    def _configure(self, processor: Any) -> None:
        self._adapt(processor)
        tokenizer = getattr(processor, "tokenizer", None)
        if self.decoder_only and tokenizer is not None:
            # A decoder-only model continues the last position of each row: prompts padded on the
            # right would make it continue from padding. The same prompt for every image never pads
            # today; a per-image prompt would.
            tokenizer.padding_side = "left"

    def _adapt(self, processor: Any) -> None:
        """Fix what this transformers version gets wrong about a loaded processor (nothing by default)."""

    def preprocessor(self) -> Pixels | None:
        """Without a prompt (the paper's unconditional captions), what makes an image the model's input:
        CPU work the stage runs ahead of the model (a loader thread, or feed processes: it pickles
        without the model). With one, None: the processor makes the image and its prompt's tokens
        together (image tokens, LLaVA's expansion)."""
        return None if self.prompt() else Pixels(self._loaded[1].image_processor)

    def caption(self, images: list) -> list[str | None]:
        """Captions for a batch of RGB PIL images (or what `preprocess` made of them), stripped of
        whitespace (the prompt not repeated)."""
        import torch
        from transformers import BatchFeature

        model, processor = self._loaded
        prompt = self.prompt()
        if prompt:
            inputs = processor(images=images, text=[prompt] * len(images), padding=True, return_tensors="pt")
        else:  # the same pixels the processor gives a batch: its image processor works image by image
            pixels = [im if isinstance(im, torch.Tensor) else self.preprocessor()(im) for im in images]
            inputs = BatchFeature({"pixel_values": torch.stack(pixels)})
        for key in list(inputs.keys()):
            inputs[key] = to_device(inputs[key], self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with inference(self.cfg):
            out = model.generate(
                **inputs,
                max_new_tokens=self.cfg.max_new_tokens,
                min_new_tokens=self.cfg.min_new_tokens,
                num_beams=self.cfg.num_beams,
                do_sample=False,
            )
        if prompt and "input_ids" in inputs and out.shape[1] > inputs["input_ids"].shape[1] and self.echoes_prompt:
            out = out[:, inputs["input_ids"].shape[1] :]  # decoder-only models return the prompt first
        texts = processor.batch_decode(out, skip_special_tokens=True)
        if prompt:
            texts = [t[len(prompt) :] if t.startswith(prompt) else t for t in texts]
        return [" ".join(t.split()) for t in texts]

    echoes_prompt = False
    decoder_only = False  # the language model generates after the prompt (OPT, Llama): pad on the left


@CAPTIONERS.register("blip2")
class Blip2Captioner(TransformersCaptioner):
    """BLIP-2 (`Blip2ForConditionalGeneration`): the paper's captioner, unconditional by default."""

    name = "blip2"
    model_class = "Blip2ForConditionalGeneration"
    decoder_only = True  # OPT

    def _adapt(self, processor: Any) -> None:
        """transformers 5.x's Blip2Processor takes the tokenizer's image token, which the tokenizer gives
        as a str, then reads its `.content` when a prompt is given: every prompted caption failed."""
        from tokenizers import AddedToken

        if isinstance(getattr(processor, "image_token", None), str):
            processor.image_token = AddedToken(processor.image_token, normalized=False, special=True)


@CAPTIONERS.register("blip")
class BlipCaptioner(TransformersCaptioner):
    """BLIP (`BlipForConditionalGeneration`, e.g. Salesforce/blip-image-captioning-large): Fig. 7's BLIP."""

    name = "blip"
    model_class = "BlipForConditionalGeneration"


LLAVA_PROMPT = "Please generate a one-sentence caption for the input image."  # the paper's LLaVA prompt


@CAPTIONERS.register("llava")
class LlavaCaptioner(TransformersCaptioner):
    """LLaVA (`LlavaForConditionalGeneration`, e.g. llava-hf/llava-1.5-7b-hf) asked the paper's prompt."""

    name = "llava"
    model_class = "LlavaForConditionalGeneration"
    echoes_prompt = True
    decoder_only = True

    def prompt(self) -> str:
        return f"USER: <image>\n{self.cfg.prompt or LLAVA_PROMPT} ASSISTANT:"


@CAPTIONERS.register("column")
class ColumnCaptioner:
    """The captions a list gives (its `caption` column, kept in the manifest): no model.

    Reads the manifest's caption text instead of the image; an image whose list gives none gets None
    (the stage turns it into an error row).
    """

    name = "column"
    reads = "caption"

    def __init__(self, cfg: CaptionSettings, device: str = "auto") -> None:
        self.cfg = cfg

    def load(self) -> None:
        """Nothing to load."""

    def caption(self, texts: list[str | None]) -> list[str | None]:
        return [t or None for t in texts]
