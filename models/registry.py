"""Registry of the supported models: one frozen `ModelSpec` per short name.

A spec is the single source of truth for a model: its family (`models.families`: the modules, the
transformers classes), its architecture hyperparameters (so that a real-size model can be built
without downloading anything), where its weights come from, the image geometry the pruner works on
(N image tokens on an H x W grid), the pruning layer K and the conversation template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from transformers import CLIPVisionConfig, PretrainedConfig, SiglipVisionConfig

from pruning_graph.validation import Grid

if TYPE_CHECKING:
    from models.families import ModelFamily

# LLaVA-1.5 conversation template, one user turn with the image before the question.
LLAVA_15_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"

# The same template as a processor chat template (the one llava-hf ships with LLaVA-1.5): images
# first, then the text of each user turn; renders LLAVA_15_PROMPT for one image and one question.
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class VisionTowerSpec:
    """CLIP vision transformer hyperparameters (LLaVA-1.5)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    image_size: int = 336
    patch_size: int = 14
    projection_dim: int = 768

    @property
    def token_size(self) -> int:
        """Pixels per image token side: one token per patch."""
        return self.patch_size

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        """The image tokens' views (H, W), in sequence order: one S / patch square."""
        side = self.image_size // self.token_size
        return ((side, side),)

    def config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            image_size=self.tile_size,
            patch_size=self.patch_size,
            projection_dim=self.projection_dim,
        )

    @property
    def tile_size(self) -> int:
        """The side of the square CLIP takes: the whole image."""
        return self.image_size


@dataclass(frozen=True)
class AnyResVisionSpec(VisionTowerSpec):
    """LLaVA-NeXT's AnyRes: CLIP on square tiles of `tile_size` px; `image_size` is the export's fixed
    square image, one of the `image_grid_pinpoints` (height, width), so that the model's own choice
    of resolution for it is itself and nothing is padded or unpadded.

    The image tokens are two views: the base view (the whole image resized to one tile), t x t with
    t = tile_size / patch; then the high-resolution view, the tiles' tokens stitched into one
    (S / patch) x (S / patch) grid with a newline token closing each row, (S / patch) x (S / patch + 1).
    """

    image_size: int = 672
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    tile: int = 336

    def __post_init__(self) -> None:
        if (self.image_size, self.image_size) not in self.image_grid_pinpoints:
            squares = sorted(height for height, width in self.image_grid_pinpoints if height == width)
            raise ValueError(
                f"LLaVA-NeXT image size {self.image_size} is not a square resolution of its grid pinpoints {squares}"
            )

    @property
    def tile_size(self) -> int:
        return self.tile

    @property
    def tiles(self) -> int:
        """Tiles of the high-resolution view, row-major: (S / tile)^2."""
        return (self.image_size // self.tile) ** 2

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        tile, side = self.tile // self.patch_size, self.image_size // self.patch_size
        return ((tile, tile), (side, side + 1))


@dataclass(frozen=True)
class Qwen2VLVisionSpec:
    """Qwen2-VL vision transformer hyperparameters; `image_size` is the export's fixed resolution.

    An image of S x S pixels is cut into (S / patch)^2 patches of `temporal_patch_size` frames; the
    merger joins `spatial_merge_size`^2 neighbouring patches into one image token.
    """

    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: int = 4
    image_size: int = 672
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    initializer_range: float = 0.02

    @property
    def token_size(self) -> int:
        """Pixels per image token side: a merged block of patches."""
        return self.patch_size * self.spatial_merge_size

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        """The image tokens' views (H, W): one square of merged blocks."""
        side = self.image_size // self.token_size
        return ((side, side),)

    def config(self, text_hidden_size: int) -> dict:
        return {
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "hidden_size": text_hidden_size,  # the merger's output: the text width
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "patch_size": self.patch_size,
            "spatial_merge_size": self.spatial_merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "initializer_range": self.initializer_range,
        }


@dataclass(frozen=True)
class VideoVisionSpec:
    """LLaVA-Video's vision side (LLaVA-OneVision's video path): SigLIP on each of `frames` frames.

    A frame of S x S pixels gives P x P patches, P = S // patch (no CLS); after the projector,
    bilinear pooling leaves ceil(P / 2) x ceil(P / 2) tokens per frame (14 x 14 = 196 at 384 px);
    the frames follow one another, and one learned newline token closes the video:
    N = frames * ceil(P / 2)^2 + 1 (3137 for 16 frames).
    """

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    image_size: int = 384
    patch_size: int = 14
    frames: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise ValueError(f"the number of video frames must be a positive integer, got {self.frames!r}")

    @property
    def patches(self) -> int:
        """P, SigLIP's patches per side of a frame."""
        return self.image_size // self.patch_size

    @property
    def pooled(self) -> int:
        """Tokens per side of a frame after the 2 x 2 bilinear pooling: ceil(P / 2)."""
        return math.ceil(self.patches / 2)

    @property
    def token_size(self) -> int:
        """Pixels per image token side, before pooling: one token per patch."""
        return self.patch_size

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        """One pooled square per frame, in frame order, then the newline token as a 1 x 1 view."""
        return ((self.pooled, self.pooled),) * self.frames + ((1, 1),)

    def config(self) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            image_size=self.image_size,
            patch_size=self.patch_size,
            vision_use_head=False,
        )


@dataclass(frozen=True)
class TextModelSpec:
    """Decoder hyperparameters (Llama, Qwen2)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02

    def config_fields(self, **rope: Any) -> dict[str, Any]:
        """Keyword arguments of a transformers text config (Llama, Qwen2) with these hyperparameters;
        `rope` joins its rope_parameters (Qwen2-VL's mrope_section)."""
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta, **rope},
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
        }


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, load and prune one model.

    Attributes:
        name: short registry name.
        family: the model family (`models.families`): "llava", "llava_next", "qwen2_vl" or "llava_video".
        hf_repo: Hugging Face repository of the weights; None for a model built locally.
        vision: vision tower hyperparameters, of the family's kind.
        text: language model hyperparameters.
        image_token_id: id of the image placeholder token.
        pad_token_id: id of the padding token.
        prune_layer: K, the decoder layer at whose input the image tokens are pruned.
        prompt_template: the conversation template, with `{prompt}` for the user's question and
            one image token.
        chat_template: the same template in the processor's Jinja form.
        quantization: the export's default weight format of the language model's linears
            ("none", "int4", "int8"; see `models.quantize`): int4 where float32 would not fit a
            24 GiB machine.
        resizable: an export may choose another image resolution (`with_image_size`, any multiple
            of the pixels of one image token); False: the vision tower's own only (CLIP's
            position table is fixed).
        mrope_section: Qwen2-VL's split of the rotary frequencies over (time, height, width).
    """

    name: str
    family: str
    hf_repo: str | None
    vision: VisionTowerSpec | Qwen2VLVisionSpec | VideoVisionSpec
    text: TextModelSpec
    image_token_id: int = 32000
    pad_token_id: int = 32001
    prune_layer: int = 2
    prompt_template: str = LLAVA_15_PROMPT
    chat_template: str = LLAVA_15_CHAT_TEMPLATE
    quantization: str = "none"
    resizable: bool = False
    mrope_section: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.resizable and self.vision.image_size % self.vision.token_size:
            raise ValueError(
                f"{self.name}: image size {self.vision.image_size} is not a multiple of "
                f"{self.vision.token_size} (the pixels of one image token)"
            )
        if not 1 <= self.prune_layer < self.text.num_hidden_layers:
            raise ValueError(
                f"{self.name}: prune_layer must be in [1, {self.text.num_hidden_layers - 1}], got {self.prune_layer}"
            )

    @property
    def image_size(self) -> int:
        """S, the side of the square image the vision graph takes."""
        return self.vision.image_size

    @property
    def views(self) -> tuple[tuple[int, int], ...]:
        """The views (H, W) of the image tokens in sequence order, each row-major (spec section 6)."""
        return self.vision.views

    @property
    def grid(self) -> Grid:
        """The image geometry the selection takes: (H, W) of a single view, else the views."""
        views = self.views
        return views[0] if len(views) == 1 else views

    @property
    def num_image_tokens(self) -> int:
        """N, the image tokens per image: H * W summed over the views."""
        return sum(height * width for height, width in self.views)

    def keep_for_rate(self, rate: float) -> int:
        """R = round(N * (1 - rate)) for a pruning rate in [0, 1) (spec section 6)."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"pruning rate must be in [0, 1), got {rate}")
        return max(1, round(self.num_image_tokens * (1.0 - rate)))

    def format_prompt(self, prompt: str) -> str:
        """The conversation text for one image and one question."""
        return self.prompt_template.format(prompt=prompt)

    def with_image_size(self, size: int) -> ModelSpec:
        """The spec at another image resolution (an export's `--image-size`).

        Raises:
            ValueError: a model whose vision tower takes one resolution only, or a size that is
                not a positive multiple of the pixels of one image token.
        """
        if size == self.vision.image_size:
            return self
        if not self.resizable:
            raise ValueError(
                f"{self.name} takes {self.vision.image_size} x {self.vision.image_size} images only "
                f"(its vision tower has a fixed position table), got image size {size}"
            )
        step = self.vision.token_size
        if isinstance(size, bool) or not isinstance(size, int) or size < step or size % step:
            raise ValueError(f"image size must be a positive multiple of {step} for {self.name}, got {size!r}")
        return replace(self, vision=replace(self.vision, image_size=size))

    @property
    def frames(self) -> int | None:
        """The video frames one prompt takes (`VideoVisionSpec`); None for a model of images."""
        return getattr(self.vision, "frames", None)

    def with_frames(self, frames: int) -> ModelSpec:
        """The spec of a video model at another number of frames (an export's `--frames`).

        Raises:
            ValueError: a model of images, or not a positive integer.
        """
        if self.frames is None:
            raise ValueError(f"{self.name} answers about images, not videos: it takes no number of frames")
        return self if frames == self.frames else replace(self, vision=replace(self.vision, frames=frames))

    def with_text_layers(self, layers: int) -> ModelSpec:
        """The architecture at its real widths with `layers` decoder layers, named `<name>-<layers>layers`
        (random weights only: no checkpoint has that depth; `bench.parity_noise` measures noise against it).

        Raises:
            ValueError: no layer from the pruning layer on (see `__post_init__`).
        """
        if layers == self.text.num_hidden_layers:
            return self
        text = replace(self.text, num_hidden_layers=layers)
        return replace(self, name=f"{self.name}-{layers}layers", hf_repo=None, text=text)

    @property
    def model_family(self) -> ModelFamily:
        """The family's modules and transformers classes (`models.families`)."""
        from models.families import get_family

        return get_family(self.family)

    def hf_config(self) -> PretrainedConfig:
        """The transformers config of this architecture, built without any download."""
        return self.model_family.config(self)


# CLIP ViT-L/14 at 336 px: LLaVA-1.5's vision tower, and LLaVA-NeXT's on each tile.
_CLIP_VIT_L = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
_CLIP_VIT_L_336 = VisionTowerSpec(**_CLIP_VIT_L)
_ANYRES_CLIP_VIT_L_336 = AnyResVisionSpec(**_CLIP_VIT_L)
_LLAMA_7B = TextModelSpec(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=11008,
    vocab_size=32064,
)
# The tiny LLaVA models' Llama: toy widths and depth. Two KV heads for four query heads, so that
# grouped-query attention is exercised too. A wider initialisation than transformers' 0.02 keeps
# greedy decoding of the random weights from collapsing onto one repeated token, while float32
# noise stays far below 1e-5.
_TINY_LLAMA = TextModelSpec(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=320,
    initializer_range=0.1,
)
# Qwen2-VL-7B-Instruct (its config.json): a 32-block ViT of width 1280, a 28-layer Qwen2 of width 3584.
_QWEN2_VL_7B_VISION = Qwen2VLVisionSpec(depth=32, embed_dim=1280, num_heads=16)
_QWEN2_7B = TextModelSpec(
    hidden_size=3584,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    intermediate_size=18944,
    vocab_size=152064,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    max_position_embeddings=32768,
)
# Qwen2 at toy size (tiny-qwen2-vl, tiny-llava-video): width 64, 4 layers, grouped-query attention
# (4 query heads, 2 KV heads); head_dim 16. A wider initialisation than transformers' 0.02 keeps
# greedy decoding of the random weights from collapsing onto one repeated token.
_TINY_QWEN2 = TextModelSpec(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    initializer_range=0.1,
)
# LLaVA-Video's conversation (LLaVA-NeXT's "qwen_1_5" template) for one video and one question.
LLAVA_VIDEO_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<video>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
# The same as a processor chat template: the video first, then the text of each user turn.
LLAVA_VIDEO_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}<video>\n{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# LLaVA-OneVision's special tokens in its tokenizer's order, the first at id 151643 at 7B.
LLAVA_VIDEO_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
# Qwen2-VL-Instruct's conversation for one image and one question: what its chat template renders
# (default system turn, image before the text, generation prompt).
QWEN2_VL_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# Qwen2-VL-Instruct's chat template, images and text (its video branch included).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2's special tokens in its tokenizer's order, the first at id 151643 in Qwen2-VL.
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _qwen2_vl(
    name: str,
    hf_repo: str | None,
    vision: Qwen2VLVisionSpec,
    text: TextModelSpec,
    *,
    first_special: int,
    mrope_section: tuple[int, int, int],
    quantization: str = "none",
) -> ModelSpec:
    """A Qwen2-VL spec: its special tokens from id `first_special` on, in `QWEN2_VL_SPECIAL_TOKENS` order."""
    return ModelSpec(
        name=name,
        family="qwen2_vl",
        hf_repo=hf_repo,
        vision=vision,
        text=text,
        image_token_id=first_special + QWEN2_VL_SPECIAL_TOKENS.index("<|image_pad|>"),
        pad_token_id=first_special + QWEN2_VL_SPECIAL_TOKENS.index("<|endoftext|>"),
        prompt_template=QWEN2_VL_PROMPT,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        quantization=quantization,
        resizable=True,
        mrope_section=mrope_section,
    )


def _llava_video(
    name: str,
    hf_repo: str | None,
    vision: VideoVisionSpec,
    text: TextModelSpec,
    *,
    first_special: int,
    quantization: str = "none",
) -> ModelSpec:
    """A LLaVA-Video spec: its special tokens from id `first_special` on, in
    `LLAVA_VIDEO_SPECIAL_TOKENS` order; the prompt's visual placeholder is <video>."""
    return ModelSpec(
        name=name,
        family="llava_video",
        hf_repo=hf_repo,
        vision=vision,
        text=text,
        image_token_id=first_special + LLAVA_VIDEO_SPECIAL_TOKENS.index("<video>"),
        pad_token_id=first_special + LLAVA_VIDEO_SPECIAL_TOKENS.index("<|endoftext|>"),
        prompt_template=LLAVA_VIDEO_PROMPT,
        chat_template=LLAVA_VIDEO_CHAT_TEMPLATE,
        quantization=quantization,
    )


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="llava-1.5-7b",
            family="llava",
            hf_repo="llava-hf/llava-1.5-7b-hf",
            vision=_CLIP_VIT_L_336,
            text=_LLAMA_7B,
            quantization="int4",
        ),
        # LLaVA-1.5-7B at its full width with 3 of its 32 decoder layers (the pruning layer is the
        # third) and 2 of its 24 CLIP layers: 0.9 B parameters, small enough for float32 parity
        # tests of the real widths. No checkpoint: random weights only.
        ModelSpec(
            name="llava-1.5-7b-3layers",
            family="llava",
            hf_repo=None,
            vision=replace(_CLIP_VIT_L_336, num_hidden_layers=2),
            text=replace(_LLAMA_7B, num_hidden_layers=3),
        ),
        ModelSpec(
            name="llava-1.5-13b",
            family="llava",
            hf_repo="llava-hf/llava-1.5-13b-hf",
            vision=_CLIP_VIT_L_336,
            text=TextModelSpec(
                hidden_size=5120,
                num_hidden_layers=40,
                num_attention_heads=40,
                num_key_value_heads=40,
                intermediate_size=13824,
                vocab_size=32064,
            ),
            quantization="int4",
        ),
        # LLaVA-1.5 at toy widths and depth (`_TINY_LLAMA`), with the real 336 px image and 24 x 24
        # token grid. Its token ids are those of the tokenizer `models.tiny_llava` trains.
        ModelSpec(
            name="tiny-llava",
            family="llava",
            hf_repo=None,
            vision=VisionTowerSpec(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, projection_dim=32
            ),
            text=_TINY_LLAMA,
            image_token_id=3,
            pad_token_id=4,
        ),
        # LLaVA-NeXT (v1.6) Vicuna-7B: LLaVA-1.5's CLIP and Llama-7B with AnyRes tiles at 672 x 672
        # (base view 24 x 24, high-resolution view 48 x 49 with its newline column: N = 2928).
        ModelSpec(
            name="llava-next-7b",
            family="llava_next",
            hf_repo="llava-hf/llava-v1.6-vicuna-7b-hf",
            vision=_ANYRES_CLIP_VIT_L_336,
            text=_LLAMA_7B,
            quantization="int4",
        ),
        # LLaVA-NeXT at toy size: tiny-llava's widths, CLIP tiles of 112 px (8 x 8 tokens) and the
        # pinpoints scaled to them, a 224 x 224 image: base view 8 x 8, high-resolution view 16 x 17,
        # N = 336. Random weights, the same synthetic tokenizer as tiny-llava.
        ModelSpec(
            name="tiny-llava-next",
            family="llava_next",
            hf_repo=None,
            vision=AnyResVisionSpec(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                projection_dim=32,
                image_size=224,
                image_grid_pinpoints=tuple((h // 3, w // 3) for h, w in _ANYRES_CLIP_VIT_L_336.image_grid_pinpoints),
                tile=112,
            ),
            text=_TINY_LLAMA,
            image_token_id=3,
            pad_token_id=4,
        ),
        _qwen2_vl(
            "qwen2-vl-7b",
            "Qwen/Qwen2-VL-7B-Instruct",
            _QWEN2_VL_7B_VISION,
            _QWEN2_7B,
            first_special=151643,
            mrope_section=(16, 24, 24),
            quantization="int4",
        ),
        # Qwen2-VL-7B at its full widths with 3 of its 28 decoder layers and 2 of its 32 vision
        # blocks, at 448 px (256 image tokens): float32 parity tests of the real widths. Random
        # weights only.
        _qwen2_vl(
            "qwen2-vl-7b-3layers",
            None,
            replace(_QWEN2_VL_7B_VISION, depth=2, image_size=448),
            replace(_QWEN2_7B, num_hidden_layers=3),
            first_special=151643,
            mrope_section=(16, 24, 24),
        ),
        # Qwen2-VL at toy size: a 2-block vision tower of width 32, a 4-layer Qwen2 of width 64,
        # 224 px images (8 x 8 = 64 image tokens). Grouped-query attention (4 query heads, 2 KV
        # heads); head_dim 16 gives 8 rotary frequencies, split 2 / 3 / 3 over (time, height, width)
        # like Qwen2-VL's 16 / 24 / 24 of 64. A wider initialisation than transformers' 0.02 keeps
        # greedy decoding of the random weights from collapsing onto one repeated token. Its
        # special tokens come first in the tokenizer `models.tiny_qwen2_vl` trains.
        _qwen2_vl(
            "tiny-qwen2-vl",
            None,
            Qwen2VLVisionSpec(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, image_size=224, initializer_range=0.1),
            _TINY_QWEN2,
            first_special=0,
            mrope_section=(2, 3, 3),
        ),
        # LLaVA-Video-7B-Qwen2 (lmms-lab's config): SigLIP-so400m at 384 px (26 layers: the feature
        # layer is the last of the 27), Qwen2-7B, 16 frames of 14 x 14 pooled tokens + the newline:
        # N = 3137. Loaded as transformers' LLaVA-OneVision (`models.llava_video`).
        _llava_video(
            "llava-video-7b",
            "lmms-lab/LLaVA-Video-7B-Qwen2",
            VideoVisionSpec(hidden_size=1152, num_hidden_layers=26, num_attention_heads=16, intermediate_size=4304),
            _QWEN2_7B,
            first_special=151643,
            quantization="int4",
        ),
        # LLaVA-Video at toy size: a 2-layer SigLIP of width 32 on 112 px frames (8 x 8 patches,
        # 4 x 4 pooled tokens), 8 frames: N = 8 x 16 + 1 = 129; tiny-qwen2-vl's Qwen2. Random weights.
        _llava_video(
            "tiny-llava-video",
            None,
            VideoVisionSpec(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=112, frames=8
            ),
            _TINY_QWEN2,
            first_special=0,
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The spec registered under `name`."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODEL_SPECS))}") from None
