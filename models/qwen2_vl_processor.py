"""Qwen2-VL's processor for images and text, and a synthetic one for models without a tokenizer here.

The synthetic processor (tiny-qwen2-vl's checkpoint, every Qwen2-VL export from random weights):
Qwen2-VL's image processor kept at the spec's one image size, a byte-level BPE with Qwen2's
special tokens at the spec's ids (`models.synthetic_processor.byte_level_bpe`), Qwen2-VL's chat
template.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast, Qwen2VLProcessor
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from models.registry import QWEN2_VL_SPECIAL_TOKENS, ModelSpec
from models.synthetic_processor import byte_level_bpe


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images and text only.

    transformers' video processors need torchvision, which this project does not install, and
    `Qwen2VLProcessor` refuses to be built without one. Images and text are processed exactly as
    by `Qwen2VLProcessor` (`mm_token_type_ids` included); videos are not supported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def special_token_ids(spec: ModelSpec) -> dict[str, int]:
    """{token: id} of Qwen2's special tokens: consecutive, in `QWEN2_VL_SPECIAL_TOKENS` order, placed
    by the spec's image token id."""
    first = spec.image_token_id - QWEN2_VL_SPECIAL_TOKENS.index("<|image_pad|>")
    return {token: first + i for i, token in enumerate(QWEN2_VL_SPECIAL_TOKENS)}


def build_processor(spec: ModelSpec) -> Qwen2VLImageTextProcessor:
    """Qwen2-VL's image processor kept at the spec's image size + a synthetic tokenizer + the chat template.

    min_pixels = max_pixels = S * S: a square image becomes S x S, so that the image grid, and with
    it the exported graphs, stay fixed. Qwen2-VL's resize keeps the aspect ratio: an image of
    another aspect gets another grid (the runtime stretches it to S x S first).
    """
    vision = spec.vision
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size, merge_size=vision.spatial_merge_size, temporal_patch_size=vision.temporal_patch_size
    )
    pin_image_size(image_processor, spec)
    return Qwen2VLImageTextProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(spec), chat_template=spec.chat_template
    )


def pin_image_size(image_processor: Qwen2VLImageProcessorPil, spec: ModelSpec) -> None:
    """Keep a square image at the spec's S x S (min_pixels = max_pixels = S * S), in place."""
    pixels = spec.image_size**2
    image_processor.size = SizeDict(shortest_edge=pixels, longest_edge=pixels)


def build_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerFast:
    """A byte-level BPE of exactly the spec's vocabulary size with Qwen2's special tokens; no BOS, like Qwen2's."""
    ids = special_token_ids(spec)
    return PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(spec.text.vocab_size, ids),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN2_VL_SPECIAL_TOKENS[1:]),
        model_max_length=spec.text.max_position_embeddings,
    )
