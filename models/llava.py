"""LLaVA-1.5: CLIP vision tower + two-layer projector + Llama, with VLM-Pruner inside the language model.

    pixel_values [1, 3, S, S] ──VisionEncoder──> image_embeds [N, d], N = (S / 14)^2 on an H x W grid
    input_ids ──TokenEmbedding──> text embeds [1, T, d]   (the host splices image_embeds in)
    position ids: one row, 0 .. T - 1; decode continues at T, T + 1, ...
    Prefill / DecodeStep: `models.decoder`'s, unchanged.

The vision encoder calls the CLIP layers and the projector of a `LlavaForConditionalGeneration`
directly, up to the feature layer (the layers after it do not contribute), CLS dropped.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import (
    BaseImageProcessor,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PretrainedConfig,
    ProcessorMixin,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from models.decoder import check_batch_of_one
from models.families import ModelFamily, describe_mismatches, pixel_normalization, register
from models.registry import ModelSpec
from models.synthetic_processor import build_processor, generation_config

# LLaVA-1.5's vision features: the second to last CLIP layer, CLS dropped, a GELU projector.
VISION_FEATURE_LAYER = -2
VISION_FEATURE_SELECT_STRATEGY = "default"
PROJECTOR_HIDDEN_ACT = "gelu"


class VisionEncoder(nn.Module):
    """CLIP vision tower up to the feature layer, CLS dropped, then the projector.

    forward(pixel_values float [1, 3, S, S]) -> image_embeds [N, d_text], N = (S / patch)^2.
    """

    def __init__(self, model: LlavaForConditionalGeneration):
        super().__init__()
        config = model.config
        strategy = config.vision_feature_select_strategy
        if strategy != "default":
            raise ValueError(f"only the 'default' feature select strategy (CLS dropped) is supported, got {strategy!r}")
        tower = model.model.vision_tower
        self.embeddings = tower.embeddings
        self.pre_layernorm = tower.pre_layrnorm
        # Layers after the feature layer do not contribute to the output: they are left out.
        depth = _vision_depth(config.vision_feature_layer, len(tower.encoder.layers))
        self.layers = nn.ModuleList(tower.encoder.layers[:depth])
        self.projector = model.model.multi_modal_projector

    def forward(self, pixel_values: Tensor) -> Tensor:
        check_batch_of_one("pixel_values", pixel_values)
        return self.features(pixel_values)[0]

    def features(self, pixel_values: Tensor) -> Tensor:
        """pixel_values float [B, 3, S, S] -> projected features [B, N, d_text] of B square images."""
        hidden = self.pre_layernorm(self.embeddings(pixel_values))  # [B, 1 + N, d_vision]
        for layer in self.layers:
            hidden = layer(hidden, None)
        return self.projector(hidden[:, 1:])


@register
class LlavaFamily(ModelFamily):
    """LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP at a fixed 336 px, Llama, RoPE positions."""

    name = "llava"
    model_class = LlavaForConditionalGeneration
    config_class = LlavaConfig
    processor_class = LlavaProcessor

    def config(self, spec: ModelSpec) -> PretrainedConfig:
        return self.config_class(**self.config_fields(spec))

    def config_fields(self, spec: ModelSpec) -> dict[str, Any]:
        """The keyword arguments of `config_class` for `spec`."""
        text = spec.text
        return dict(
            vision_config=spec.vision.config(),
            text_config=LlamaConfig(**text.config_fields(), pad_token_id=spec.pad_token_id),
            image_token_index=spec.image_token_id,
            image_seq_length=_tile_tokens(spec),
            projector_hidden_act=PROJECTOR_HIDDEN_ACT,
            vision_feature_layer=VISION_FEATURE_LAYER,
            vision_feature_select_strategy=VISION_FEATURE_SELECT_STRATEGY,
            pad_token_id=spec.pad_token_id,
        )

    def config_mismatches(self, spec: ModelSpec, config: PretrainedConfig) -> list[str]:
        checks = (
            ("vision tower image size", config.vision_config.image_size, spec.vision.tile_size),
            ("patch size", config.vision_config.patch_size, spec.vision.patch_size),
            ("image token id", config.image_token_id, spec.image_token_id),
            ("text layers", config.text_config.num_hidden_layers, spec.text.num_hidden_layers),
            ("text hidden size", config.text_config.hidden_size, spec.text.hidden_size),
            ("vision feature layer", config.vision_feature_layer, VISION_FEATURE_LAYER),
            ("vision feature select strategy", config.vision_feature_select_strategy, VISION_FEATURE_SELECT_STRATEGY),
        )
        return describe_mismatches(checks)

    def pixel_values_shape(self, spec: ModelSpec) -> tuple[int, ...]:
        return (1, 3, spec.image_size, spec.image_size)

    def vision_encoder(self, model: LlavaForConditionalGeneration, spec: ModelSpec) -> VisionEncoder:
        return VisionEncoder(model)

    def vision_images(self, spec: ModelSpec) -> int:
        """Square images CLIP encodes per picture: 1."""
        return 1

    def image_processor(self, spec: ModelSpec) -> BaseImageProcessor:
        """The image processor of `synthetic_processor`: CLIP's at the spec's image size."""
        side = spec.vision.image_size
        return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})

    def synthetic_processor(self, spec: ModelSpec) -> ProcessorMixin:
        return build_processor(
            spec,
            self.image_processor(spec),
            self.processor_class,
            vision_feature_select_strategy=VISION_FEATURE_SELECT_STRATEGY,
        )

    def generation_config(self, spec: ModelSpec) -> GenerationConfig:
        return generation_config(spec)

    def preprocess_manifest(self, processor: ProcessorMixin, spec: ModelSpec) -> dict[str, Any]:
        image_processor = processor.image_processor
        crop = image_processor.crop_size
        return {
            "size": image_processor.size["shortest_edge"],
            "crop_size": {"height": crop["height"], "width": crop["width"]},
            **pixel_normalization(image_processor),
        }

    def vision_manifest(self, model: LlavaForConditionalGeneration, spec: ModelSpec) -> dict[str, Any]:
        vision = model.config.vision_config
        layers = _vision_depth(model.config.vision_feature_layer, vision.num_hidden_layers)
        n, dv, d = _tile_tokens(spec), vision.hidden_size, model.config.text_config.hidden_size
        tokens = n + 1  # CLS
        # One multiply-add is 2 FLOPs; the attention matmuls over the full n x n product.
        layer = 2 * tokens * dv * 4 * dv + 2 * 2 * tokens * tokens * dv + 2 * 2 * tokens * dv * vision.intermediate_size
        per_image = 2 * n * 3 * vision.patch_size**2 * dv + layers * layer + 2 * n * dv * d + 2 * n * d * d
        flops = self.vision_images(spec) * per_image
        return {
            "num_layers": layers,
            "hidden_size": dv,
            "intermediate_size": vision.intermediate_size,
            "patch_size": vision.patch_size,
            "flops": flops,
        }


def _tile_tokens(spec: ModelSpec) -> int:
    """Image tokens of one square CLIP input: (tile / patch)^2."""
    return (spec.vision.tile_size // spec.vision.patch_size) ** 2


def _vision_depth(feature_layer: int | list[int], num_layers: int) -> int:
    """Number of CLIP layers to run so that the last one outputs hidden_states[feature_layer].

    hidden_states[0] is the embedding output and hidden_states[i] the output of layer i - 1.
    """
    if isinstance(feature_layer, bool) or not isinstance(feature_layer, int):
        raise ValueError(f"only a single vision_feature_layer is supported, got {feature_layer!r}")
    depth = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 0 <= depth <= num_layers:
        raise ValueError(f"vision_feature_layer {feature_layer} is out of range for {num_layers} layers")
    return depth
