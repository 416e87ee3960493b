"""Qwen2-VL: its vision tower for one fixed image grid + Qwen2 with M-RoPE, VLM-Pruner inside.

    pixel_values [P, C*tp*p*p] ──Qwen2VLVisionEncoder──> image_embeds [N, d]   (P = t*h*w patches,
                                                                                N = P / merge^2)
    input_ids ──TokenEmbedding──> text embeds [1, T, d]   (the host splices image_embeds in)
    host (`runtime.families.qwen2_vl`): M-RoPE position ids [3, 1, T] as transformers'
        `get_rope_index` makes them, and the rope delta: decode step s sits at T + s + delta on
        all three rows, T the full prompt length, whatever was pruned.

    Qwen2VLPrefill / Qwen2VLDecodeStep: `models.decoder`'s (M-RoPE rotary tables from the 3-row
    position ids there), after checking that every layer attends fully (no sliding window). The selection's geometry is the merged H x W token grid (spec section 6);
    each kept token keeps its original 3-row position ids.

The vision side runs for one fixed image grid: the Conv3d patch embedding as the equivalent
matmul on flattened patches (ExecuTorch has no portable Conv3d kernel), the 2-D vision rotary
tables precomputed as buffers, and attention inside each frame (t = 1 for an image) with static
boundaries instead of transformers' data-dependent `cu_seqlens`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    GenerationConfig,
    PretrainedConfig,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionBlock, apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_position_ids

from models.decoder import DecodeStep, Prefill
from models.families import ModelFamily, describe_mismatches, pixel_normalization, register
from models.registry import ModelSpec
from models.synthetic_processor import instruct_generation_config
from models.qwen2_vl_processor import Qwen2VLImageTextProcessor, build_processor, pin_image_size, special_token_ids
from models.selectors import SelectionMethod
from pruning_graph.validation import Grid


class PatchEmbedding(nn.Module):
    """A patchifying Conv3d (stride = kernel, no padding) as the equivalent matmul on flattened patches.

    forward(patches [P, C * kt * kh * kw]) -> [P, out]. Input features in (channel, time, row,
    column) order, the order of Qwen2-VL's flattened patches. The weight stays the Conv3d's own
    tensor, viewed as [out, C * kt * kh * kw], so that it keeps its name in the model.
    """

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if (
            tuple(conv.stride) != tuple(conv.kernel_size)
            or any(conv.padding)
            or any(d != 1 for d in conv.dilation)
            or conv.groups != 1
        ):
            raise ValueError(f"only a patchifying Conv3d (stride = kernel, no padding) maps to a matmul, got {conv}")
        self.proj = conv
        self.in_features = conv.weight[0].numel()

    def forward(self, patches: Tensor) -> Tensor:
        return F.linear(patches.to(self.proj.weight.dtype), self.proj.weight.flatten(1), self.proj.bias)


class Qwen2VLVisionEncoder(nn.Module):
    """Qwen2-VL's vision tower and patch merger for one fixed image grid.

    forward(pixel_values float [t*h*w, C*tp*p*p]) -> image_embeds [N, d_text], N = t*h*w / merge^2.
    `pixel_values` are the image processor's flattened patches, in its order (2 x 2 merge blocks
    row-major, patches row-major inside a block); the embeddings come out in the merged tokens'
    row-major order, the order of the image tokens in the prompt.
    """

    def __init__(self, model: Qwen2VLForConditionalGeneration, *, grid: tuple[int, int, int]):
        super().__init__()
        tower = model.model.visual
        t, h, w = grid
        merge = tower.spatial_merge_size
        if min(grid) < 1 or h % merge or w % merge:
            raise ValueError(f"grid (t, h, w) must be positive with h and w multiples of {merge}, got {tuple(grid)}")
        self.num_patches = t * h * w
        self.frames = t
        self.patch_embed = PatchEmbedding(tower.patch_embed.proj)
        self.blocks = tower.blocks
        self.merger = tower.merger
        # The rotary tables of the grid's patches, from a rotary embedding made afresh from the
        # config: right even for a model whose buffers were never initialised (a weight-free twin).
        positions = get_vision_position_ids(torch.tensor([grid]), merge)  # [P, 2]: (row, column) of each patch
        cos, sin = type(tower.rotary_pos_emb)(tower.config)(positions, positions)  # [P, head_dim] each
        device = tower.patch_embed.proj.weight.device
        self.register_buffer("cos", cos.to(device), persistent=False)
        self.register_buffer("sin", sin.to(device), persistent=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        if tuple(pixel_values.shape) != (self.num_patches, self.patch_embed.in_features):
            raise ValueError(
                f"pixel_values must be [{self.num_patches}, {self.patch_embed.in_features}] for this grid, "
                f"got {tuple(pixel_values.shape)}"
            )
        hidden = self.patch_embed(pixel_values)  # [P, d_vision]
        for block in self.blocks:
            hidden = _vision_block(block, hidden, self.cos, self.sin, self.frames)
        return self.merger(hidden)  # [N, d_text]


class Qwen2VLPrefill(Prefill):
    """`models.decoder.Prefill` with M-RoPE: position_ids int64 [3, 1, T] (temporal, height, width rows)."""

    def __init__(
        self,
        model: Qwen2VLForConditionalGeneration,
        *,
        grid: Grid,
        keep: int,
        prune_layer: int,
        method: SelectionMethod | None = None,
    ):
        _check_full_attention(model)
        super().__init__(model, grid=grid, keep=keep, prune_layer=prune_layer, method=method)


class Qwen2VLDecodeStep(DecodeStep):
    """`models.decoder.DecodeStep` with M-RoPE: position_ids int64 [3, 1, 1]."""

    def __init__(self, model: Qwen2VLForConditionalGeneration):
        _check_full_attention(model)
        super().__init__(model)


@register
class Qwen2VLFamily(ModelFamily):
    """Qwen2-VL (`Qwen2VLForConditionalGeneration`): one fixed image resolution per export, M-RoPE."""

    name = "qwen2_vl"
    model_class = Qwen2VLForConditionalGeneration
    config_class = Qwen2VLConfig
    processor_class = Qwen2VLImageTextProcessor
    prefill_class = Qwen2VLPrefill
    decode_class = Qwen2VLDecodeStep
    position_rows = 3

    def config(self, spec: ModelSpec) -> Qwen2VLConfig:
        text, ids = spec.text, special_token_ids(spec)
        return Qwen2VLConfig(
            vision_config=spec.vision.config(text.hidden_size),
            text_config={
                **text.config_fields(mrope_section=list(spec.mrope_section)),
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": spec.pad_token_id,
            },
            image_token_id=spec.image_token_id,
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )

    def config_mismatches(self, spec: ModelSpec, config: PretrainedConfig) -> list[str]:
        vision, text = config.vision_config, config.text_config
        checks = (
            ("patch size", vision.patch_size, spec.vision.patch_size),
            ("spatial merge size", vision.spatial_merge_size, spec.vision.spatial_merge_size),
            ("temporal patch size", vision.temporal_patch_size, spec.vision.temporal_patch_size),
            ("vision depth", vision.depth, spec.vision.depth),
            ("image token id", config.image_token_id, spec.image_token_id),
            ("text layers", text.num_hidden_layers, spec.text.num_hidden_layers),
            ("text hidden size", text.hidden_size, spec.text.hidden_size),
            ("M-RoPE sections", list(text.rope_parameters.get("mrope_section", [])), list(spec.mrope_section)),
        )
        return describe_mismatches(checks)

    def pixel_values_shape(self, spec: ModelSpec) -> tuple[int, ...]:
        vision = spec.vision
        patches = (spec.image_size // vision.patch_size) ** 2
        return (patches, 3 * vision.temporal_patch_size * vision.patch_size**2)

    def vision_encoder(self, model: Qwen2VLForConditionalGeneration, spec: ModelSpec) -> Qwen2VLVisionEncoder:
        side = spec.image_size // spec.vision.patch_size
        return Qwen2VLVisionEncoder(model, grid=(1, side, side))

    def fit_processor(self, processor: ProcessorMixin, spec: ModelSpec) -> ProcessorMixin:
        """min_pixels = max_pixels = S * S: a square image stays S x S, the export's one grid."""
        pin_image_size(processor.image_processor, spec)
        return processor

    def synthetic_processor(self, spec: ModelSpec) -> Qwen2VLImageTextProcessor:
        return build_processor(spec)

    def generation_config(self, spec: ModelSpec) -> GenerationConfig:
        return instruct_generation_config(special_token_ids(spec))

    def preprocess_manifest(self, processor: ProcessorMixin, spec: ModelSpec) -> dict[str, Any]:
        image_processor = processor.image_processor
        return {
            "image_size": spec.image_size,
            "resize": "stretch",
            **pixel_normalization(image_processor),
            "patch_size": image_processor.patch_size,
            "temporal_patch_size": image_processor.temporal_patch_size,
            "merge_size": image_processor.merge_size,
        }

    def vision_manifest(self, model: Qwen2VLForConditionalGeneration, spec: ModelSpec) -> dict[str, Any]:
        vision = model.config.vision_config
        patches, patch_features = self.pixel_values_shape(spec)
        n, dv, d = spec.num_image_tokens, vision.embed_dim, model.config.text_config.hidden_size
        mlp = int(dv * vision.mlp_ratio)
        merged = dv * vision.spatial_merge_size**2
        # One multiply-add is 2 FLOPs; attention over the one frame of P patches.
        block = 2 * patches * dv * 4 * dv + 2 * 2 * patches * patches * dv + 2 * 2 * patches * dv * mlp
        flops = 2 * patches * patch_features * dv + vision.depth * block + 2 * n * merged * (merged + d)
        return {
            "num_layers": vision.depth,
            "hidden_size": dv,
            "intermediate_size": mlp,
            "patch_size": vision.patch_size,
            "flops": flops,
        }


def _vision_block(block: Qwen2VLVisionBlock, hidden: Tensor, cos: Tensor, sin: Tensor, frames: int) -> Tensor:
    """One vision transformer block; each of the t frames attends to itself, as in Qwen2-VL.

    Args:
        hidden: [P, d_vision], P = t * h * w patches, frame-major. cos, sin: [P, head_dim], the
            2-D rotary tables of the patches.
    Returns:
        [P, d_vision].
    """
    attn = block.attn
    length = hidden.shape[0]
    qkv = attn.qkv(block.norm1(hidden)).reshape(length, 3, attn.num_heads, attn.head_dim)
    query, key, value = qkv.permute(1, 0, 2, 3).unbind(0)  # [P, heads, head_dim] each
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
    # The frames as a batch, static boundaries: [t, heads, h * w, head_dim].
    per_frame = (frames, length // frames, attn.num_heads, attn.head_dim)
    query, key, value = (x.reshape(per_frame).transpose(1, 2) for x in (query, key, value))
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scaling)
    hidden = hidden + attn.proj(out.transpose(1, 2).reshape(length, attn.dim))
    return hidden + block.mlp(block.norm2(hidden))


def _check_full_attention(model: Qwen2VLForConditionalGeneration) -> None:
    """The modules attend to the whole sequence: sliding-window layers are not supported."""
    layer_types = model.model.language_model.config.layer_types
    if any(kind != "full_attention" for kind in layer_types):
        raise ValueError(f"only full-attention decoder layers are supported, got {sorted(set(layer_types))}")
