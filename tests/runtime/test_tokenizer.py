"""Prompt tokenization with `tokenizers` against transformers' LlavaProcessor of tiny-llava."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.tokenizer import PromptTokenizer, find_image_positions

PROMPTS = ["What is in the image?", "  Describe {this} picture, please.\nTwo lines ", "a", "héllo wörld 😀"]


@pytest.fixture(scope="module")
def tokenizer(runtime_artifact) -> PromptTokenizer:
    return PromptTokenizer(
        runtime_artifact.path("processor/tokenizer.json"),
        prompt_template=runtime_artifact.prompt_template,
        image_token_id=runtime_artifact.text.image_token_id,
        num_image_tokens=runtime_artifact.num_image_tokens,
    )


@pytest.mark.parametrize("prompt", PROMPTS)
def test_input_ids_equal_the_processor(prompt, tokenizer, hf_processor, runtime_artifact, image):
    text = runtime_artifact.prompt_template.format(prompt=prompt)
    expected = hf_processor(images=image, text=text, return_tensors="np")["input_ids"]
    ours = tokenizer.encode(prompt)
    assert ours.dtype == np.int64
    assert np.array_equal(ours, expected)
    assert (ours == runtime_artifact.text.image_token_id).sum() == runtime_artifact.num_image_tokens


def test_decode_equals_the_processor(tokenizer, hf_processor):
    ids = tokenizer.encode(PROMPTS[1])[0].tolist() + [2]  # with </s>
    assert tokenizer.decode(ids) == hf_processor.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(prompt, tokenizer):
    with pytest.raises(ValueError, match="prompt is empty"):
        tokenizer.encode(prompt)


def test_prompt_with_the_image_token(tokenizer):
    with pytest.raises(ValueError, match="must not contain <image>"):
        tokenizer.encode("look: <image>")


def test_prompt_not_a_string(tokenizer):
    with pytest.raises(ValueError, match="must be a string"):
        tokenizer.encode(None)


def test_image_positions_checks():
    np.testing.assert_array_equal(find_image_positions(np.array([[1, 5, 3, 3, 3, 7]]), 3, 3), [2, 3, 4])
    # Positions given by the ids, not only one block (the graphs take them as an input).
    np.testing.assert_array_equal(find_image_positions(np.array([[3, 3, 1, 3]]), 3, 3), [0, 1, 3])
    with pytest.raises(ValueError, match="found 2 image tokens"):
        find_image_positions(np.array([[1, 3, 3, 7]]), 3, 3)
    with pytest.raises(ValueError, match="batch size 1"):
        find_image_positions(np.array([[3, 3, 3], [3, 3, 3]]), 3, 3)
