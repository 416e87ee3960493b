"""LLaVA-Video's exportable modules against transformers' LLaVA-OneVision video path (tiny-llava-video:
8 frames of 112 x 112, 4 x 4 pooled tokens each, then the newline token: N = 129 image tokens in 9
views): the vision encoder, the unpruned prefill and 16 greedy tokens, and the pruned prefill
against a hand composition with `reference_select` over the frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import LoadedModel, get_spec, load_model
from models.tiny_llava import VIDEO_RECIPE
from runtime.eager import EagerModel
from runtime.generate import GenerationConfig
from runtime.samples import sample_frames
from tests.models.conftest import embed
from tests.models.hand_composed import reference_pruned_logits

ATOL = 1e-5
FRAMES = 8
VIEWS = ((4, 4),) * FRAMES + ((1, 1),)
N = 129
STEPS = 16


@pytest.fixture(scope="module")
def video_model(tmp_path_factory) -> LoadedModel:
    folder = VIDEO_RECIPE.build(tmp_path_factory.mktemp("checkpoints") / VIDEO_RECIPE.name)
    return load_model(VIDEO_RECIPE.name, folder)


@pytest.fixture(scope="module")
def unpruned(video_model) -> EagerModel:
    return EagerModel.from_loaded(video_model)


@pytest.fixture(scope="module")
def frames():
    return sample_frames(FRAMES)


@pytest.fixture(scope="module")
def inputs(unpruned, frames) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [1, T] and pixel_values [1, 8, 3, 112, 112] of the test video."""
    return tuple(torch.from_numpy(x) for x in unpruned.prepare_inputs(frames, "What happens in the video?"))


def test_geometry_of_the_spec():
    spec = get_spec("tiny-llava-video")
    assert spec.views == VIEWS and spec.grid == VIEWS and spec.num_image_tokens == N and spec.frames == FRAMES
    real = get_spec("llava-video-7b")
    assert real.frames == 16 and real.grid == ((14, 14),) * 16 + ((1, 1),) and real.num_image_tokens == 3137
    assert real.keep_for_rate(0.889) == 348
    assert real.with_frames(64).num_image_tokens == 64 * 196 + 1
    with pytest.raises(ValueError, match="positive integer"):
        real.with_frames(0)
    with pytest.raises(ValueError, match="answers about images"):
        get_spec("tiny-llava").with_frames(16)


def test_vision_encoder_matches_transformers(video_model, unpruned, inputs):
    """Each frame's pooled 4 x 4 tokens in frame order, then the newline token."""
    input_ids, pixel_values = inputs
    assert pixel_values.shape == (1, FRAMES, 3, 112, 112)
    with torch.no_grad():
        expected = video_model.model.model.get_video_features(pixel_values).pooler_output[0]
        got = unpruned.session.vision(pixel_values)
    assert got.shape == (N, video_model.spec.text.hidden_size)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert torch.equal(got[-1], video_model.model.model.image_newline)
    assert int((input_ids == video_model.spec.image_token_id).sum()) == N


def test_runtime_preprocessing_equals_the_processor(unpruned, frames, inputs):
    """The host side's frames are bit-exact SigLIP PIL processing, frame by frame."""
    np.testing.assert_array_equal(unpruned.inputs.family.preprocess(frames), inputs[1].numpy())


def test_unpruned_prefill_and_greedy_tokens_match_transformers(video_model, unpruned, inputs):
    input_ids, pixel_values = inputs
    with torch.no_grad():
        expected = video_model.model.generate(
            input_ids=input_ids,
            pixel_values_videos=pixel_values,
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


@pytest.mark.parametrize("keep", [14, 64])
def test_pruned_prefill_matches_hand_composition(video_model, inputs, keep):
    """R = 14 (88.9 %) and 64 over the 8 frames and the newline, against transformers' layers +
    `reference_select`."""
    pruned = EagerModel.from_loaded(video_model, keep=keep)
    inputs_embeds, position_ids, image_positions = embed(pruned, *inputs)
    with torch.no_grad():
        logits, kept, _, cache = pruned.session.prefill_module(inputs_embeds, position_ids, image_positions)
    expected_logits, expected_kept, expected_cache = reference_pruned_logits(
        video_model.model, inputs_embeds, int(image_positions[0]), grid=VIEWS, keep=keep, prune_layer=2
    )
    assert torch.equal(kept, expected_kept) and kept.shape == (keep,)
    torch.testing.assert_close(logits, expected_logits[:, -1], atol=ATOL, rtol=0)
    for (key, value), layer in zip(cache, expected_cache.layers):
        torch.testing.assert_close(key, layer.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(value, layer.values, atol=ATOL, rtol=0)
    # Tokens of several frames survive.
    assert len({int(index) // 16 for index in kept}) > 1


def test_prepare_inputs_refuses_an_image_and_a_short_video(unpruned, frames):
    with pytest.raises(ValueError, match="videos of 8 frames, got an image"):
        unpruned.prepare_inputs(frames[0], "What happens?")
    with pytest.raises(ValueError, match="videos of 8 frames, got 3 frames"):
        unpruned.prepare_inputs(frames[:3], "What happens?")
