"""Registry of the supported models: one frozen `ModelSpec` per short name.

A spec is the single source of truth for a model: its architecture hyperparameters (so that a
real-size model can be built without downloading anything), where its weights come from, the
image geometry the pruner works on (N image tokens on an H x W grid), the pruning layer K and the
conversation template.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

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
    """CLIP vision transformer hyperparameters."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    image_size: int = 336
    patch_size: int = 14
    projection_dim: int = 768

    def config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            image_size=self.image_size,
            patch_size=self.patch_size,
            projection_dim=self.projection_dim,
        )


@dataclass(frozen=True)
class TextModelSpec:
    """Llama decoder hyperparameters."""

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

    def config(self, pad_token_id: int) -> LlamaConfig:
        return LlamaConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            pad_token_id=pad_token_id,
        )


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, load and prune one model.

    Attributes:
        name: short registry name.
        hf_repo: Hugging Face repository of the weights; None for a model built locally.
        vision: vision tower hyperparameters.
        text: language model hyperparameters.
        image_token_id: id of the `<image>` placeholder token.
        pad_token_id: id of the padding token.
        vision_feature_layer: vision tower hidden state fed to the projector (-2: second to last).
        vision_feature_select_strategy: "default" drops the CLS token.
        projector_hidden_act: activation between the projector's two linears.
        prune_layer: K, the decoder layer at whose input the image tokens are pruned.
        prompt_template: the conversation template, with `{prompt}` for the user's question.
        chat_template: the same template in the processor's Jinja form.
        quantization: the export's default weight format of the language model's linears
            ("none", "int4", "int8"; see `models.quantize`): int4 where float32 would not fit a
            24 GiB machine.
    """

    name: str
    hf_repo: str | None
    vision: VisionTowerSpec
    text: TextModelSpec
    image_token_id: int = 32000
    pad_token_id: int = 32001
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    prune_layer: int = 2
    prompt_template: str = LLAVA_15_PROMPT
    chat_template: str = LLAVA_15_CHAT_TEMPLATE
    quantization: str = "none"

    def __post_init__(self) -> None:
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(
                f"{self.name}: image size {self.vision.image_size} is not a multiple of "
                f"patch size {self.vision.patch_size}"
            )
        if not 1 <= self.prune_layer < self.text.num_hidden_layers:
            raise ValueError(
                f"{self.name}: prune_layer must be in [1, {self.text.num_hidden_layers - 1}], got {self.prune_layer}"
            )
        if self.vision_feature_select_strategy != "default":
            raise ValueError(
                f"{self.name}: only the 'default' feature select strategy (CLS dropped) gives the "
                f"H x W token grid, got {self.vision_feature_select_strategy!r}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the image tokens, row-major."""
        side = self.vision.image_size // self.vision.patch_size
        return side, side

    @property
    def num_image_tokens(self) -> int:
        """N, the image tokens per image."""
        height, width = self.grid
        return height * width

    def keep_for_rate(self, rate: float) -> int:
        """R = round(N * (1 - rate)) for a pruning rate in [0, 1) (spec section 6)."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"pruning rate must be in [0, 1), got {rate}")
        return max(1, round(self.num_image_tokens * (1.0 - rate)))

    def format_prompt(self, prompt: str) -> str:
        """The conversation text for one image and one question."""
        return self.prompt_template.format(prompt=prompt)

    def llava_config(self) -> LlavaConfig:
        """The transformers config of this architecture, built without any download."""
        return LlavaConfig(
            vision_config=self.vision.config(),
            text_config=self.text.config(self.pad_token_id),
            image_token_index=self.image_token_id,
            image_seq_length=self.num_image_tokens,
            projector_hidden_act=self.projector_hidden_act,
            vision_feature_layer=self.vision_feature_layer,
            vision_feature_select_strategy=self.vision_feature_select_strategy,
            pad_token_id=self.pad_token_id,
        )


# CLIP ViT-L/14 at 336 px, LLaVA-1.5's vision tower.
_CLIP_VIT_L_336 = VisionTowerSpec(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
)
_LLAMA_7B = TextModelSpec(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=11008,
    vocab_size=32064,
)

MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="llava-1.5-7b",
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
            hf_repo=None,
            vision=replace(_CLIP_VIT_L_336, num_hidden_layers=2),
            text=replace(_LLAMA_7B, num_hidden_layers=3),
        ),
        ModelSpec(
            name="llava-1.5-13b",
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
        # LLaVA-1.5 at toy widths and depth, with the real 336 px image and 24 x 24 token grid.
        # Two KV heads for four query heads, so that grouped-query attention is exercised too. A wider
        # initialisation than transformers' 0.02 keeps greedy decoding of the random weights from
        # collapsing onto one repeated token, while float32 noise stays far below 1e-5.
        # Its token ids are those of the tokenizer `models.tiny_llava` trains.
        ModelSpec(
            name="tiny-llava",
            hf_repo=None,
            vision=VisionTowerSpec(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, projection_dim=32
            ),
            text=TextModelSpec(
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=128,
                vocab_size=320,
                initializer_range=0.1,
            ),
            image_token_id=3,
            pad_token_id=4,
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The spec registered under `name`."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODEL_SPECS))}") from None
