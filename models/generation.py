"""Greedy generation in eager PyTorch over the exportable modules of `models.llava`.

The exported runtimes run the same steps on the same modules: embed the prompt, splice the image
embeddings in at the image placeholder block, prefill (which prunes), then one decode step per
token, positions continuing from the full prompt length T.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from models.checkpoints import load_model
from models.llava import DecodeStep, Prefill, TokenEmbedding, VisionEncoder
from models.registry import ModelSpec
from pruning_graph import VLMPrunerConfig


@dataclass(frozen=True)
class Generation:
    """Output of `PrunedLlava.generate`.

    Attributes:
        text: the decoded answer, special tokens removed.
        token_ids: the generated ids, the end-of-sequence token included when it was produced.
        kept_indices: the image tokens the pruner kept, positions inside the image block.
    """

    text: str
    token_ids: list[int]
    kept_indices: list[int]


class PrunedLlava:
    """LLaVA-1.5 with VLM-Pruner at decoder layer K, greedy decoding, batch size 1.

    Args:
        model: the transformers model whose weights the modules share.
        processor: its processor (tokenizer and image processor).
        spec: the registry spec (image geometry, pruning layer, prompt template).
        keep: R, image tokens kept; None or N keeps all (the unpruned model).
        pruner_config: VLM-Pruner hyperparameters.
    """

    def __init__(
        self,
        model: LlavaForConditionalGeneration,
        processor: LlavaProcessor,
        spec: ModelSpec,
        *,
        keep: int | None = None,
        pruner_config: VLMPrunerConfig = VLMPrunerConfig(),
    ):
        self.spec = spec
        self.model = model
        self.processor = processor
        self.keep = spec.num_image_tokens if keep is None else keep
        self.vision_encoder = VisionEncoder(model).eval()
        self.token_embedding = TokenEmbedding(model).eval()
        self.prefill = Prefill(
            model, grid=spec.grid, keep=self.keep, prune_layer=spec.prune_layer, pruner_config=pruner_config
        ).eval()
        self.decode_step = DecodeStep(model).eval()
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)
        self.max_positions = model.config.text_config.max_position_embeddings

    @classmethod
    def from_registry(
        cls,
        name: str,
        *,
        keep: int | None = None,
        model_path: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
        pruner_config: VLMPrunerConfig = VLMPrunerConfig(),
    ) -> PrunedLlava:
        """Load the registered model `name` (see `models.load_model`) and wrap it."""
        loaded = load_model(name, model_path, dtype=dtype)
        return cls(loaded.model, loaded.processor, loaded.spec, keep=keep, pruner_config=pruner_config)

    def prepare_inputs(self, image: Image.Image, prompt: str) -> tuple[Tensor, Tensor]:
        """Apply the conversation template and the processor.

        Returns:
            input_ids int64 [1, T] with the N image placeholders, pixel_values float [1, 3, S, S].
        """
        if not isinstance(image, Image.Image):
            raise ValueError(f"one PIL image per request, got {type(image).__name__}")
        image_token = self.processor.image_token
        if image_token in prompt:
            raise ValueError(f"the prompt must not contain {image_token}: the conversation template places the image")
        inputs = self.processor(images=image, text=self.spec.format_prompt(prompt), return_tensors="pt")
        return inputs["input_ids"], inputs["pixel_values"]

    @torch.no_grad()
    def embed(self, input_ids: Tensor, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """Token embeddings with the image embeddings spliced in at the placeholder block.

        Args:
            input_ids: int64 [1, T]. pixel_values: float [1, 3, S, S].
        Returns:
            inputs_embeds [1, T, d], image_start int64 [1].
        """
        if pixel_values.dim() != 4 or pixel_values.shape[0] != 1:
            raise ValueError(
                f"exactly one image per request: pixel_values must be [1, 3, H, W], got {tuple(pixel_values.shape)}"
            )
        start = find_image_block(input_ids, self.spec.image_token_id, self.spec.num_image_tokens)
        n = self.spec.num_image_tokens
        device = self.token_embedding.embed_tokens.weight.device
        text = self.token_embedding(input_ids.to(device))  # [1, T, d]
        image = self.vision_encoder(pixel_values.to(device)).to(text.dtype)  # [N, d]
        embeds = torch.cat([text[:, :start], image[None], text[:, start + n :]], dim=1)
        return embeds, torch.tensor([start], dtype=torch.int64, device=device)

    @torch.no_grad()
    def generate_ids(self, input_ids: Tensor, pixel_values: Tensor, max_new_tokens: int) -> tuple[list[int], Tensor]:
        """Greedy decoding until an end-of-sequence token or `max_new_tokens`.

        Returns:
            the generated ids, and the kept image tokens int64 [R].
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        embeds, image_start = self.embed(input_ids, pixel_values)
        position = embeds.shape[1]
        if position + max_new_tokens > self.max_positions:
            raise ValueError(
                f"prompt ({position} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"{self.max_positions} positions"
            )
        logits, kept, cache = self.prefill(embeds, image_start)
        tokens: list[int] = []
        while True:
            token = int(logits.argmax(dim=-1))
            tokens.append(token)
            if token in self.eos_token_ids or len(tokens) == max_new_tokens:
                return tokens, kept
            token_embeds = self.token_embedding(torch.tensor([[token]], dtype=torch.int64, device=embeds.device))
            step_position = torch.tensor([position], dtype=torch.int64, device=embeds.device)
            logits, cache = self.decode_step(token_embeds, step_position, cache)
            position += 1

    def generate(self, image: Image.Image, prompt: str, max_new_tokens: int = 32) -> Generation:
        """Answer `prompt` about `image` with greedy decoding."""
        input_ids, pixel_values = self.prepare_inputs(image, prompt)
        tokens, kept = self.generate_ids(input_ids, pixel_values, max_new_tokens)
        text = self.processor.decode(tokens, skip_special_tokens=True)
        return Generation(text=text, token_ids=tokens, kept_indices=kept.tolist())


def find_image_block(input_ids: Tensor, image_token_id: int, num_image_tokens: int) -> int:
    """Position of the first image placeholder; the N placeholders must form one contiguous block.

    Args:
        input_ids: int64 [1, T].
    Raises:
        ValueError: batch size other than 1, no image placeholder, more or fewer than one image's
            worth of placeholders, or a split block.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"batch size 1 only: input_ids must be [1, T], got {tuple(input_ids.shape)}")
    positions = (input_ids[0] == image_token_id).nonzero()[:, 0]
    count = positions.numel()
    if count == 0:
        raise ValueError(f"no image token (id {image_token_id}) in the prompt; one image is required")
    if count != num_image_tokens:
        raise ValueError(
            f"expected one image ({num_image_tokens} image tokens), found {count} image tokens "
            f"({count / num_image_tokens:g} images' worth)"
        )
    start = int(positions[0])
    if int(positions[-1]) - start != num_image_tokens - 1:
        raise ValueError(f"the {num_image_tokens} image tokens are not contiguous")
    return start
