"""LLaVA-Video (LLaVA-Video-7B-Qwen2): SigLIP on each frame, projector, 2 x 2 bilinear pooling, Qwen2.

    pixel_values [1, F, 3, S, S] ──VideoVisionEncoder──> image_embeds [N, d]:
        per frame: SigLIP (P x P patches, P = S // 14, no CLS) ──projector──> [P * P, d]
            ──bilinear pooling──> ceil(P / 2) x ceil(P / 2) tokens (14 x 14 at 384 px)
        the frames in order, then the learned newline token: N = F * ceil(P / 2)^2 + 1
    position ids, prefill and decode: LLaVA-1.5's (one row, RoPE), on Qwen2's layers.

transformers runs the model as LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`, its
video path, `get_video_features`): lmms-lab publishes LLaVA-Video-7B-Qwen2 in the LLaVA-NeXT
repository's format, which transformers' LLaVA-OneVision conversion script turns into that class.
The prompt's placeholder is the video token; an artifact answers about videos only.

transformers' video processors need torchvision, which this project does not install (its CPU
build is not on PyPI): frames are processed by SigLIP's PIL image processor, resize to S x S, as
LLaVA-Video's own inference code does, and the processor is built without a video processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import (
    GenerationConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2Config,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from models.decoder import check_batch_of_one
from models.families import ModelFamily, describe_mismatches, pixel_normalization, register
from models.registry import LLAVA_VIDEO_SPECIAL_TOKENS, ModelSpec, VideoVisionSpec
from models.synthetic_processor import byte_level_bpe, instruct_generation_config

# LLaVA-OneVision's video features: the last SigLIP layer kept (the checkpoint's tower stops at the
# feature layer), every patch (SigLIP has no CLS).
VISION_FEATURE_LAYER = -1
VISION_FEATURE_SELECT_STRATEGY = "full"


class VideoVisionEncoder(nn.Module):
    """SigLIP + projector on every frame, 2 x 2 bilinear pooling, the newline token at the end.

    forward(pixel_values float [1, F, 3, S, S]) -> image_embeds [F * ceil(P / 2)^2 + 1, d_text].
    """

    def __init__(self, model: LlavaOnevisionForConditionalGeneration, spec: ModelSpec):
        super().__init__()
        config = model.config
        if config.vision_feature_layer != VISION_FEATURE_LAYER:
            raise ValueError(f"only vision_feature_layer -1 is supported, got {config.vision_feature_layer!r}")
        tower = model.model.vision_tower
        self.embeddings = tower.embeddings
        self.layers = tower.encoder.layers
        self.projector = model.model.multi_modal_projector
        self.image_newline = model.model.image_newline  # [d_text]
        vision: VideoVisionSpec = spec.vision
        self.patches, self.pooled = vision.patches, vision.pooled

    def forward(self, pixel_values: Tensor) -> Tensor:
        check_batch_of_one("pixel_values", pixel_values)
        hidden = self.embeddings(pixel_values[0])  # [F, P * P, d_vision]
        for layer in self.layers:
            hidden = layer(hidden, None)
        features = self.projector(hidden)  # [F, P * P, d]
        frames, _, d = features.shape
        square = features.reshape(frames, self.patches, self.patches, d).permute(0, 3, 1, 2)
        pooled = F.interpolate(square, size=(self.pooled, self.pooled), mode="bilinear")  # [F, d, p, p]
        tokens = pooled.permute(0, 2, 3, 1).reshape(-1, d)
        return torch.cat([tokens, self.image_newline[None]])


class LlavaVideoProcessor(LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` without a video processor (transformers' need torchvision).

    The image processor is SigLIP's, at S x S: the frames are processed one by one as images
    (`LlavaVideoFamily.processor_inputs`).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


@register
class LlavaVideoFamily(ModelFamily):
    """LLaVA-Video (`LlavaOnevisionForConditionalGeneration`'s video path): F frames, Qwen2, RoPE positions."""

    name = "llava_video"
    model_class = LlavaOnevisionForConditionalGeneration
    config_class = LlavaOnevisionConfig
    processor_class = LlavaVideoProcessor

    def config(self, spec: ModelSpec) -> PretrainedConfig:
        text = spec.text
        ids = special_token_ids(spec)
        return LlavaOnevisionConfig(
            vision_config=spec.vision.config(),
            text_config=Qwen2Config(**text.config_fields(), pad_token_id=spec.pad_token_id, tie_word_embeddings=False),
            image_token_index=ids["<image>"],
            video_token_index=spec.image_token_id,
            vision_feature_layer=VISION_FEATURE_LAYER,
            vision_feature_select_strategy=VISION_FEATURE_SELECT_STRATEGY,
            tie_word_embeddings=False,
        )

    def config_mismatches(self, spec: ModelSpec, config: PretrainedConfig) -> list[str]:
        checks = (
            ("frame size", config.vision_config.image_size, spec.vision.image_size),
            ("patch size", config.vision_config.patch_size, spec.vision.patch_size),
            ("video token id", config.video_token_id, spec.image_token_id),
            ("text layers", config.text_config.num_hidden_layers, spec.text.num_hidden_layers),
            ("text hidden size", config.text_config.hidden_size, spec.text.hidden_size),
            ("vision feature layer", config.vision_feature_layer, VISION_FEATURE_LAYER),
            ("vision feature select strategy", config.vision_feature_select_strategy, VISION_FEATURE_SELECT_STRATEGY),
        )
        return describe_mismatches(checks)

    def checkpoint_note(self, spec: ModelSpec) -> str:
        return (
            f"{spec.name} loads transformers' LLaVA-OneVision checkpoints; {spec.hf_repo} is published in the "
            "LLaVA-NeXT repository's format: convert it with transformers' "
            "models/llava_onevision/convert_llava_onevision_weights_to_hf.py (transformers' source tree) and "
            "point MODEL_PATH at the result"
        )

    def pixel_values_shape(self, spec: ModelSpec) -> tuple[int, ...]:
        side = spec.image_size
        return (1, spec.frames, 3, side, side)

    def vision_encoder(self, model: LlavaOnevisionForConditionalGeneration, spec: ModelSpec) -> VideoVisionEncoder:
        return VideoVisionEncoder(model, spec)

    def image_processor(self, spec: ModelSpec) -> SiglipImageProcessorPil:
        """SigLIP's PIL image processor at S x S (resize, no crop; mean and std 0.5)."""
        return SiglipImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size})

    def fit_processor(self, processor: ProcessorMixin, spec: ModelSpec) -> ProcessorMixin:
        """The frames' image processor: SigLIP's at S x S with the checkpoint's normalisation (a
        converted checkpoint ships LLaVA-OneVision's AnyRes image processor for still images)."""
        found = processor.image_processor
        image_processor = self.image_processor(spec)
        image_processor.image_mean, image_processor.image_std = list(found.image_mean), list(found.image_std)
        processor.image_processor = image_processor
        return processor

    def synthetic_processor(self, spec: ModelSpec) -> LlavaVideoProcessor:
        return LlavaVideoProcessor(
            image_processor=self.image_processor(spec),
            tokenizer=build_tokenizer(spec),
            num_image_tokens=spec.vision.patches**2,
            vision_feature_select_strategy=VISION_FEATURE_SELECT_STRATEGY,
            chat_template=spec.chat_template,
        )

    def processor_inputs(
        self, processor: ProcessorMixin, visual: Sequence[Image.Image], text: str, spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids int64 [1, T], pixel_values float32 [1, F, 3, S, S]) of `text` holding one video
        token and the frames: each frame through the image processor, the video token expanded to
        N as `LlavaOnevisionProcessor` expands it."""
        if isinstance(visual, Image.Image) or len(visual) != spec.frames:
            got = "an image" if isinstance(visual, Image.Image) else f"{len(visual)} frames"
            raise ValueError(f"{spec.name} takes a video of {spec.frames} frames, got {got}")
        pixels = processor.image_processor(list(visual), return_tensors="np")["pixel_values"]
        video = processor.video_token
        if text.count(video) != 1:
            raise ValueError(f"the prompt must hold the video token {video} exactly once")
        ids = processor.tokenizer(text.replace(video, video * spec.num_image_tokens), return_tensors="np")["input_ids"]
        return ids.astype(np.int64), pixels[None].astype(np.float32)

    def generation_config(self, spec: ModelSpec) -> GenerationConfig:
        return instruct_generation_config(special_token_ids(spec))

    def preprocess_manifest(self, processor: ProcessorMixin, spec: ModelSpec) -> dict[str, Any]:
        image_processor = processor.image_processor
        return {
            "image_size": spec.image_size,
            "resize": "stretch",
            "frames": spec.frames,
            "sampling": "uniform",
            **pixel_normalization(image_processor),
        }

    def input_sections(self, spec: ModelSpec, processor: ProcessorMixin) -> dict[str, Any]:
        sections = super().input_sections(spec, processor)
        sections["geometry"]["frames"] = spec.frames
        return sections

    def vision_manifest(self, model: LlavaOnevisionForConditionalGeneration, spec: ModelSpec) -> dict[str, Any]:
        vision = model.config.vision_config
        n, dv, d = spec.vision.patches**2, vision.hidden_size, model.config.text_config.hidden_size
        # One multiply-add is 2 FLOPs; attention over a frame's n patches; the projector's two linears.
        layer = 2 * n * dv * 4 * dv + 2 * 2 * n * n * dv + 2 * 2 * n * dv * vision.intermediate_size
        per_frame = 2 * n * 3 * vision.patch_size**2 * dv + vision.num_hidden_layers * layer + 2 * n * (dv * d + d * d)
        return {
            "num_layers": vision.num_hidden_layers,
            "hidden_size": dv,
            "intermediate_size": vision.intermediate_size,
            "patch_size": vision.patch_size,
            "flops": spec.frames * per_frame,
        }


def special_token_ids(spec: ModelSpec) -> dict[str, int]:
    """{token: id} of LLaVA-OneVision's special tokens: consecutive, in `LLAVA_VIDEO_SPECIAL_TOKENS`
    order, placed by the spec's video token id."""
    first = spec.image_token_id - LLAVA_VIDEO_SPECIAL_TOKENS.index("<video>")
    return {token: first + i for i, token in enumerate(LLAVA_VIDEO_SPECIAL_TOKENS)}


def build_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerFast:
    """A byte-level BPE of exactly the spec's vocabulary size with LLaVA-OneVision's special tokens; no BOS."""
    return PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(spec.text.vocab_size, special_token_ids(spec)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        additional_special_tokens=["<|im_start|>"],
        model_max_length=spec.text.max_position_embeddings,
    )
