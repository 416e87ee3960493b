"""LLaVA-NeXT's exportable modules against transformers (tiny-llava-next: a 224 x 224 image in 112 px
tiles, N = 8 x 8 + 16 x 17 = 336 image tokens in two views): the AnyRes vision encoder, the unpruned
prefill and 16 greedy tokens, and the pruned prefill against a hand composition with
`reference_select` over the two views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import LoadedModel, get_spec, load_model
from models.tiny_llava import NEXT_RECIPE
from runtime.eager import EagerModel
from runtime.generate import GenerationConfig
from tests.models.conftest import embed
from tests.models.hand_composed import reference_pruned_logits

ATOL = 1e-5
VIEWS = ((8, 8), (16, 17))
N = 336
STEPS = 16


@pytest.fixture(scope="module")
def next_model(tmp_path_factory) -> LoadedModel:
    folder = NEXT_RECIPE.build(tmp_path_factory.mktemp("checkpoints") / NEXT_RECIPE.name)
    return load_model(NEXT_RECIPE.name, folder)


@pytest.fixture(scope="module")
def unpruned(next_model) -> EagerModel:
    return EagerModel.from_loaded(next_model)


@pytest.fixture(scope="module")
def inputs(unpruned, image, prompt) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [1, T] and pixel_values [1, 5, 3, 112, 112] of the (stretched) test image."""
    return tuple(torch.from_numpy(x) for x in unpruned.prepare_inputs(image, prompt))


def transformers_inputs(input_ids: torch.Tensor, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's own inputs: the image size is the export's 224 x 224, which the runtime fits."""
    return {"input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": torch.tensor([[224, 224]])}


def test_geometry_of_the_spec():
    spec = get_spec("tiny-llava-next")
    assert spec.views == VIEWS and spec.grid == VIEWS and spec.num_image_tokens == N
    real = get_spec("llava-next-7b")
    assert real.grid == ((24, 24), (48, 49)) and real.num_image_tokens == 2928
    assert real.keep_for_rate(0.889) == 325


def test_vision_encoder_matches_transformers(next_model, unpruned, inputs):
    """Base view, then the stitched tiles with a newline token closing each of the 16 rows."""
    input_ids, pixel_values = inputs
    assert pixel_values.shape == (1, 5, 3, 112, 112)
    with torch.no_grad():
        features = next_model.model.model.get_image_features(pixel_values, torch.tensor([[224, 224]]))
        expected = torch.cat(list(features.pooler_output))
        got = unpruned.session.vision(pixel_values)
    assert got.shape == (N, next_model.spec.text.hidden_size)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    newline = next_model.model.model.image_newline
    newline_rows = got[64:].reshape(16, 17, -1)[:, 16]
    assert torch.equal(newline_rows, newline.expand_as(newline_rows))
    assert int((input_ids == next_model.spec.image_token_id).sum()) == N


def test_unpruned_prefill_and_greedy_tokens_match_transformers(next_model, unpruned, inputs):
    input_ids, pixel_values = inputs
    with torch.no_grad():
        expected = next_model.model.generate(
            **transformers_inputs(input_ids, pixel_values),
            max_new_tokens=STEPS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        logits, kept, _, _ = unpruned.session.prefill_module(*embed(unpruned, input_ids, pixel_values))
    torch.testing.assert_close(logits, expected.logits[0], atol=ATOL, rtol=0)
    assert torch.equal(kept, torch.arange(N))
    expected_tokens = expected.sequences[0, input_ids.shape[1] :].tolist()
    tokens = unpruned.generate_ids(input_ids.numpy(), pixel_values.numpy(), GenerationConfig(max_new_tokens=STEPS))
    assert len(expected_tokens) == STEPS and tokens.token_ids == expected_tokens
    assert len(set(expected_tokens)) > 4  # the random model does not repeat one token


@pytest.mark.parametrize("keep", [37, 64])
def test_pruned_prefill_matches_hand_composition(next_model, inputs, keep):
    """R = 37 (88.9 %) and 64 over the two views, against transformers' layers + `reference_select`."""
    pruned = EagerModel.from_loaded(next_model, keep=keep)
    inputs_embeds, position_ids, image_positions = embed(pruned, *inputs)
    with torch.no_grad():
        logits, kept, _, cache = pruned.session.prefill_module(inputs_embeds, position_ids, image_positions)
    expected_logits, expected_kept, expected_cache = reference_pruned_logits(
        next_model.model, inputs_embeds, int(image_positions[0]), grid=VIEWS, keep=keep, prune_layer=2
    )
    assert torch.equal(kept, expected_kept) and kept.shape == (keep,)
    torch.testing.assert_close(logits, expected_logits[:, -1], atol=ATOL, rtol=0)
    for (key, value), layer in zip(cache, expected_cache.layers):
        torch.testing.assert_close(key, layer.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(value, layer.values, atol=ATOL, rtol=0)
    # Both views keep tokens: the base view's 64 and the high-resolution view's 272.
    assert int((kept < 64).sum()) > 0 and int((kept >= 64).sum()) > 0


def test_image_given_at_another_size_is_stretched(unpruned, inputs, image, prompt):
    """prepare_inputs fits the picture to 224 x 224 like the runtime; the processor then tiles 2 x 2."""
    input_ids, pixel_values = inputs
    fitted = unpruned.inputs.family.fit_image(image)
    assert fitted.size == (224, 224)
    again = unpruned.processor(images=fitted, text=unpruned.spec.format_prompt(prompt), return_tensors="np")
    np.testing.assert_array_equal(again["pixel_values"], pixel_values.numpy())
