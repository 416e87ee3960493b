"""Requests the pruned model does not serve fail early, with a message naming the problem."""

from __future__ import annotations

import pytest
import torch

from runtime.generate import GenerationConfig


def generate_ids(model, input_ids, pixel_values, max_new_tokens=4):
    return model.generate_ids(input_ids.numpy(), pixel_values.numpy(), GenerationConfig(max_new_tokens=max_new_tokens))


def test_prompt_without_image_token(unpruned, inputs, tiny):
    _, pixel_values = inputs
    text_only = tiny.processor.tokenizer("USER: What is in the image? ASSISTANT:", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match=r"expected one image \(576 image tokens, id 3\) in input_ids, found 0"):
        generate_ids(unpruned, text_only, pixel_values)


def test_two_images_in_the_prompt(unpruned, tiny, image):
    processed = tiny.processor(
        images=[image, image], text="USER: <image>\n<image>\nCompare them. ASSISTANT:", return_tensors="pt"
    )
    input_ids, pixel_values = processed["input_ids"], processed["pixel_values"]
    assert pixel_values.shape[0] == 2
    with pytest.raises(ValueError, match=r"found 1152 image tokens"):
        generate_ids(unpruned, input_ids, pixel_values)
    single = input_ids[:, : int((input_ids[0] == 3).nonzero()[576])]
    with pytest.raises(ValueError, match=r"pixel_values must be \[1, 3, 336, 336\] for this model, got \[2, 3, 336, 336\]"):
        generate_ids(unpruned, single, pixel_values)


def test_two_images_given_to_generate(unpruned, image, prompt):
    with pytest.raises(ValueError, match="one PIL image per request, got list"):
        unpruned.generate([image, image], prompt)


def test_image_token_inside_the_user_prompt(unpruned, image):
    with pytest.raises(ValueError, match="the prompt must not contain <image>"):
        unpruned.generate(image, "<image>\nAnd this one?")


def test_batch_larger_than_one(unpruned, inputs):
    input_ids, pixel_values = inputs
    with pytest.raises(ValueError, match=r"batch size 1 only: input_ids must be \[1, T\], got shape \(2, \d+\)"):
        generate_ids(unpruned, input_ids.repeat(2, 1), pixel_values)
    session = unpruned.session
    embeds = torch.zeros(2, input_ids.shape[1], 64)
    positions = torch.arange(input_ids.shape[1])[None, None]
    with pytest.raises(ValueError, match=r"batch size 1 only: inputs_embeds has batch size 2"):
        session.prefill_module(embeds, positions, torch.arange(5, 5 + 576))
    with pytest.raises(ValueError, match=r"batch size 1 only: pixel_values has batch size 2"):
        session.vision(pixel_values.repeat(2, 1, 1, 1))


def test_generation_longer_than_the_context(unpruned, inputs):
    with pytest.raises(ValueError, match=r"exceeds the model's 4096 positions"):
        generate_ids(unpruned, *inputs, max_new_tokens=4096)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 0"):
        generate_ids(unpruned, *inputs, max_new_tokens=0)


def test_decode_cache_of_the_wrong_depth(unpruned):
    embeds = torch.zeros(1, 1, 64)
    cache = ((torch.zeros(1, 2, 5, 16), torch.zeros(1, 2, 5, 16)),)
    with pytest.raises(ValueError, match="cache has 1 layers, the model has 4"):
        unpruned.session.decode_module(embeds, torch.tensor([[[5]]]), cache)
