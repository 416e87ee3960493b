"""Requests the pruned model does not serve fail early, with a message naming the problem."""

from __future__ import annotations

import pytest
import torch

from models import find_image_block


def test_prompt_without_image_token(unpruned, inputs, tiny):
    _, pixel_values = inputs
    text_only = tiny.processor.tokenizer("USER: What is in the image? ASSISTANT:", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match=r"no image token \(id 3\) in the prompt"):
        unpruned.embed(text_only, pixel_values)


def test_two_images_in_the_prompt(unpruned, tiny, image):
    processed = tiny.processor(
        images=[image, image], text="USER: <image>\n<image>\nCompare them. ASSISTANT:", return_tensors="pt"
    )
    input_ids, pixel_values = processed["input_ids"], processed["pixel_values"]
    assert pixel_values.shape[0] == 2
    two_images = r"exactly one image per request: pixel_values must be \[1, 3, H, W\], got \(2, 3, 336, 336\)"
    with pytest.raises(ValueError, match=two_images):
        unpruned.embed(input_ids, pixel_values)
    two_blocks = r"expected one image \(576 image tokens\), found 1152 image tokens \(2 images' worth\)"
    with pytest.raises(ValueError, match=two_blocks):
        unpruned.embed(input_ids, pixel_values[:1])


def test_two_images_given_to_generate(unpruned, image, prompt):
    with pytest.raises(ValueError, match="one PIL image per request, got list"):
        unpruned.generate([image, image], prompt)


def test_image_token_inside_the_user_prompt(unpruned, image):
    with pytest.raises(ValueError, match="the prompt must not contain <image>"):
        unpruned.generate(image, "<image>\nAnd this one?")


def test_batch_larger_than_one(unpruned, inputs):
    input_ids, pixel_values = inputs
    with pytest.raises(ValueError, match=r"batch size 1 only: input_ids must be \[1, T\], got \(2, \d+\)"):
        unpruned.embed(input_ids.repeat(2, 1), pixel_values)
    embeds, image_start = unpruned.embed(input_ids, pixel_values)
    with pytest.raises(ValueError, match=r"batch size 1 only: inputs_embeds has batch size 2"):
        unpruned.prefill(embeds.repeat(2, 1, 1), image_start)
    with pytest.raises(ValueError, match=r"batch size 1 only: pixel_values has batch size 2"):
        unpruned.vision_encoder(pixel_values.repeat(2, 1, 1, 1))


def test_split_image_block():
    ids = torch.tensor([[1, 7, 3, 3, 9, 3, 3, 8]])
    with pytest.raises(ValueError, match="the 4 image tokens are not contiguous"):
        find_image_block(ids, image_token_id=3, num_image_tokens=4)
    assert find_image_block(torch.tensor([[1, 7, 3, 3, 3, 3, 8]]), image_token_id=3, num_image_tokens=4) == 2


def test_generation_longer_than_the_context(unpruned, inputs):
    with pytest.raises(ValueError, match=r"exceeds the model's 4096 positions"):
        unpruned.generate_ids(*inputs, max_new_tokens=4096)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 0"):
        unpruned.generate_ids(*inputs, max_new_tokens=0)


def test_decode_cache_of_the_wrong_depth(unpruned):
    embeds = torch.zeros(1, 1, 64)
    cache = ((torch.zeros(1, 2, 5, 16), torch.zeros(1, 2, 5, 16)),)
    with pytest.raises(ValueError, match="cache has 1 layers, the model has 4"):
        unpruned.decode_step(embeds, torch.tensor([5]), cache)
