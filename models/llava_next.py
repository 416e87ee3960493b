"""LLaVA-NeXT (v1.6): LLaVA-1.5's CLIP, projector and Llama, on AnyRes tiles of one fixed square image.

    pixel_values [1, 1 + tiles, 3, t, t] ──AnyResVisionEncoder──> image_embeds [N, d]:
        base view (the image resized to one tile): (t/p) x (t/p) tokens, then
        high-resolution view (the tiles, row-major, stitched): (S/p) rows x (S/p + 1) columns,
        the learned newline token closing each row
    position ids, prefill and decode: LLaVA-1.5's.

An export has one image size S, a square of the model's `image_grid_pinpoints` (672 for
LLaVA-v1.6): transformers then picks S x S itself for an S x S image, and its unpadding removes
nothing, so N is fixed (2928 at 672 px, 336 for tiny-llava-next). The runtime stretches any image
to S x S first (`runtime.families.llava_next`). The selection sees the two views with their own
coordinates (`pruning_graph`, spec section 6); the newline tokens are image tokens like the others.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PretrainedConfig,
    ProcessorMixin,
)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from models.decoder import check_batch_of_one
from models.families import register
from models.llava import LlavaFamily, VisionEncoder
from models.registry import AnyResVisionSpec, ModelSpec


class AnyResVisionEncoder(nn.Module):
    """CLIP + projector on the base tile and the high-resolution tiles, packed as LLaVA-NeXT packs them.

    forward(pixel_values float [1, 1 + tiles, 3, t, t]) -> image_embeds [N, d_text],
    N = (t/p)^2 + (S/p) (S/p + 1).
    """

    def __init__(self, model: LlavaNextForConditionalGeneration, spec: ModelSpec):
        super().__init__()
        vision: AnyResVisionSpec = spec.vision
        self.clip = VisionEncoder(model)
        self.image_newline = model.model.image_newline  # [d_text]
        self.tile_tokens = vision.tile // vision.patch_size
        self.tiles_per_side = vision.image_size // vision.tile

    def forward(self, pixel_values: Tensor) -> Tensor:
        check_batch_of_one("pixel_values", pixel_values)
        features = self.clip.features(pixel_values[0])  # [1 + tiles, (t/p)^2, d]
        d, t, side = features.shape[-1], self.tile_tokens, self.tiles_per_side
        base, tiles = features[0], features[1:]
        # (tile row, tile column, token row, token column) -> (tile row, token row, tile column, token column)
        grid = tiles.reshape(side, side, t, t, d).permute(0, 2, 1, 3, 4).reshape(side * t, side * t, d)
        newlines = self.image_newline.expand(side * t, 1, d)
        return torch.cat([base, torch.cat([grid, newlines], dim=1).reshape(-1, d)])


@register
class LlavaNextFamily(LlavaFamily):
    """LLaVA-NeXT (`LlavaNextForConditionalGeneration`): AnyRes CLIP tiles, Llama, RoPE positions."""

    name = "llava_next"
    model_class = LlavaNextForConditionalGeneration
    config_class = LlavaNextConfig
    processor_class = LlavaNextProcessor

    def config_fields(self, spec: ModelSpec) -> dict[str, Any]:
        pinpoints = [list(pinpoint) for pinpoint in spec.vision.image_grid_pinpoints]
        return super().config_fields(spec) | {"image_grid_pinpoints": pinpoints}

    def config_mismatches(self, spec: ModelSpec, config: PretrainedConfig) -> list[str]:
        mismatches = super().config_mismatches(spec, config)
        size = spec.image_size
        if [size, size] not in [list(pinpoint) for pinpoint in config.image_grid_pinpoints]:
            mismatches.append(
                f"image grid pinpoints: checkpoint {config.image_grid_pinpoints!r} lack the export's {size} x {size}"
            )
        return mismatches

    def pixel_values_shape(self, spec: ModelSpec) -> tuple[int, ...]:
        tile = spec.vision.tile_size
        return (1, self.vision_images(spec), 3, tile, tile)

    def vision_encoder(self, model: LlavaNextForConditionalGeneration, spec: ModelSpec) -> AnyResVisionEncoder:
        return AnyResVisionEncoder(model, spec)

    def vision_images(self, spec: ModelSpec) -> int:
        """The base tile and the high-resolution tiles."""
        return 1 + spec.vision.tiles

    def image_processor(self, spec: ModelSpec) -> LlavaNextImageProcessorPil:
        """LLaVA-NeXT's, at the spec's tile size and pinpoints."""
        tile = spec.vision.tile_size
        return LlavaNextImageProcessorPil(
            size={"shortest_edge": tile},
            crop_size={"height": tile, "width": tile},
            image_grid_pinpoints=[list(pinpoint) for pinpoint in spec.vision.image_grid_pinpoints],
        )

    def preprocess_manifest(self, processor: ProcessorMixin, spec: ModelSpec) -> dict[str, Any]:
        return super().preprocess_manifest(processor, spec) | {"image_size": spec.image_size, "resize": "stretch"}
