"""Build the `tiny-qwen2-vl` checkpoint: Qwen2-VL at toy size, random weights, saved like a real one.

The directory holds what `from_pretrained` expects from a Qwen2-VL checkpoint: the model (config,
safetensors, generation config) and a processor (Qwen2-VL's image processor kept at one fixed
224 x 224 size, a small byte-level BPE with Qwen2-VL's special tokens trained here on the corpus of
`models.synthetic_processor`, Qwen2-VL's chat template). Nothing is downloaded. Building is
deterministic and idempotent: a recipe stamp in the directory tells a finished build of the
current recipe, which is then reused.

    224 x 224 image ──patches of 14──> 16 x 16 grid, pixel_values [256, 3 * 2 * 14 * 14]
        ──2 x 2 merge──> 8 x 8 = 64 image tokens (<|image_pad|>) in the prompt
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from models.recipe_build import Recipe
from models.synthetic_processor import CORPUS

NAME = "tiny-qwen2-vl"
SEED = 4  # with this seed, greedy decoding of the random weights does not repeat one token

# Qwen2-VL's special tokens in Qwen2's order (151643, 151644, ... there), here ids 0, 1, ...
SPECIAL_TOKENS = (
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
VOCAB_SIZE = 512
IMAGE_SIZE = 224
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2

# Qwen2-VL-Instruct's chat template: a default system turn, the image where the user put it.
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


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images and text only.

    transformers' video processors need torchvision, which this project does not install, and
    `Qwen2VLProcessor` refuses to be built without one. Images and text are processed exactly as
    by `Qwen2VLProcessor` (`mm_token_type_ids` included); videos are not supported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def build_tiny_qwen2_vl(directory: str | os.PathLike | None = None) -> Path:
    """Build the tiny-qwen2-vl checkpoint into `directory` (default `build/models/tiny-qwen2-vl` in
    the repository) unless the current recipe is already there; returns the folder, loadable with
    `Qwen2VLForConditionalGeneration.from_pretrained` and `Qwen2VLImageTextProcessor.from_pretrained`."""
    return RECIPE.build(directory)


def _write(folder: Path) -> None:
    build_processor().save_pretrained(folder)
    build_model().save_pretrained(folder)


def tiny_config() -> Qwen2VLConfig:
    """Qwen2-VL at toy widths: a 2-block vision tower of width 32, a 4-layer Qwen2 of width 64.

    Grouped-query attention (4 query heads, 2 KV heads); head_dim 16 gives 8 rotary frequencies,
    split 2 / 3 / 3 over (temporal, height, width) like Qwen2-VL's 16 / 24 / 24 of 64. A wider
    initialisation than transformers' 0.02 keeps greedy decoding of the random weights from
    collapsing onto one repeated token.
    """
    ids = {token: SPECIAL_TOKENS.index(token) for token in SPECIAL_TOKENS}
    return Qwen2VLConfig(
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,  # the merger's output: the text width
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
            "initializer_range": 0.1,
        },
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": VOCAB_SIZE,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "initializer_range": 0.1,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_model() -> Qwen2VLForConditionalGeneration:
    """The tiny model with float32 random weights drawn from `SEED`; the global RNG state is kept."""
    config = tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen2VLForConditionalGeneration(config)
    text = config.text_config
    # Qwen2-VL-Instruct's: stop at <|im_end|> or <|endoftext|>.
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, text.pad_token_id],
        pad_token_id=text.pad_token_id,
    )
    return model.eval()


def build_processor() -> Qwen2VLImageTextProcessor:
    """Qwen2-VL's image processor kept at 224 x 224 + the trained tokenizer + the chat template.

    min_pixels = max_pixels = 224 * 224: a square image becomes 224 x 224 (16 x 16 patches), so
    that the image grid, and with it the exported graphs, stay fixed. Qwen2-VL's resize keeps the
    aspect ratio: an image of another aspect gets another grid.
    """
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels,
        max_pixels=pixels,
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
    )
    return Qwen2VLImageTextProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), chat_template=QWEN2_VL_CHAT_TEMPLATE
    )


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE of exactly `VOCAB_SIZE` tokens, the special tokens first; no BOS, like Qwen2's."""
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise ValueError(f"the tiny tokenizer has {tokenizer.get_vocab_size()} tokens, {VOCAB_SIZE} were asked for")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=4096,
    )


RECIPE = Recipe(
    name=NAME,
    seed=SEED,
    ingredients=(tiny_config().to_dict(), SPECIAL_TOKENS, IMAGE_SIZE, CORPUS, QWEN2_VL_CHAT_TEMPLATE),
    write=_write,
    default_dir=Path(__file__).resolve().parent.parent / "build" / "models" / NAME,
)
