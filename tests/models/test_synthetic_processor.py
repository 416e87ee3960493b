"""The synthetic processor of random-weight models: vocabulary size and special ids of the spec."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import LlavaProcessor, PreTrainedTokenizerFast

from models import get_spec
from models.synthetic_processor import SPECIAL_TOKENS, build_tokenizer, generation_config

PROMPT = "USER: <image>\nWhat is shown? ASSISTANT:"


@pytest.fixture(scope="module")
def llava_7b_processor() -> LlavaProcessor:
    """LLaVA-1.5-7B's: 32064 tokens, most of them placeholders."""
    spec = get_spec("llava-1.5-7b")
    return spec.model_family.synthetic_processor(spec)


def test_llava_7b_vocabulary_and_special_ids(llava_7b_processor):
    tokenizer = llava_7b_processor.tokenizer
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == 32064 == get_spec("llava-1.5-7b").text.vocab_size
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 32000, 32001]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 32001)
    assert tokenizer.image_token == "<image>"


def test_llava_7b_prompt_encoding(llava_7b_processor):
    tokenizer = llava_7b_processor.tokenizer
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids[0] == 1 and ids.count(32000) == 1 and max(ids) <= 32000
    assert tokenizer.decode(ids, skip_special_tokens=True) == "USER: \nWhat is shown? ASSISTANT:"


def test_llava_7b_processor_expands_the_image(llava_7b_processor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    processed = llava_7b_processor(images=image, text=PROMPT, return_tensors="np")
    assert processed["pixel_values"].shape == (1, 3, 336, 336)
    assert int((processed["input_ids"] == 32000).sum()) == 576


def test_tiny_llava_tokenizer_trains_every_special_token():
    spec = get_spec("tiny-llava")
    tokenizer = build_tokenizer(spec)
    assert len(tokenizer) == 320
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    assert not any(token.startswith("<placeholder_") for token in tokenizer.get_vocab())
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids[0] == 1 and ids.count(3) == 1


@pytest.mark.parametrize(("name", "pad"), [("tiny-llava", 4), ("llava-1.5-7b", 32001)])
def test_generation_config(name, pad):
    config = generation_config(get_spec(name))
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, pad)
