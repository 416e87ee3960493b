"""The exportable modules against transformers: unpruned parity, pruned parity, cache, generation."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from models import Prefill
from runtime.eager import EagerModel
from runtime.generate import GenerationConfig
from tests.models.conftest import embed
from tests.models.hand_composed import reference_pruned_logits

ATOL = 1e-5
DECODE_STEPS = 8


@pytest.fixture(scope="module")
def embedded(pruned, inputs):
    return embed(pruned, *inputs)


@pytest.fixture(scope="module")
def pruned_prefill(pruned, embedded):
    with torch.no_grad():
        return pruned.session.prefill_module(*embedded)


def greedy_tokens(model: EagerModel, input_ids, pixel_values, steps: int) -> list[int]:
    return model.generate_ids(input_ids.numpy(), pixel_values.numpy(), GenerationConfig(max_new_tokens=steps)).token_ids


def decode_position(position: int) -> torch.Tensor:
    return torch.tensor([[[position]]])


def test_vision_encoder_matches_transformers(tiny, unpruned, inputs):
    _, pixel_values = inputs
    with torch.no_grad():
        expected = tiny.model.model.get_image_features(pixel_values=pixel_values).pooler_output[0]
        got = unpruned.session.vision(pixel_values)
    assert got.shape == (576, tiny.spec.text.hidden_size)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_image_block_comes_from_token_ids(tiny, unpruned, inputs):
    input_ids, _ = inputs
    _, position_ids, image_positions = embed(unpruned, *inputs)
    start = int(image_positions[0])
    assert torch.equal(image_positions, start + torch.arange(576))
    assert torch.equal(position_ids, torch.arange(input_ids.shape[1])[None, None])
    # BOS, then "USER: " before the placeholders.
    assert input_ids[0, start - 1] != tiny.spec.image_token_id
    assert (input_ids[0, start : start + 576] == tiny.spec.image_token_id).all()
    assert input_ids[0, start + 576] != tiny.spec.image_token_id


def test_unpruned_prefill_matches_transformers(tiny, unpruned, inputs):
    input_ids, pixel_values = inputs
    with torch.no_grad():
        expected = tiny.model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True)
        logits, kept, order, cache = unpruned.session.prefill_module(*embed(unpruned, input_ids, pixel_values))
    torch.testing.assert_close(logits, expected.logits[:, -1], atol=ATOL, rtol=0)
    assert torch.equal(kept, torch.arange(576)) and torch.equal(order, kept)
    assert len(cache) == tiny.spec.text.num_hidden_layers
    for (key, value), layer in zip(cache, expected.past_key_values.layers):
        torch.testing.assert_close(key, layer.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(value, layer.values, atol=ATOL, rtol=0)


def test_unpruned_greedy_generation_matches_transformers(tiny, unpruned, inputs):
    input_ids, pixel_values = inputs
    steps = 16
    with torch.no_grad():
        expected = tiny.model.generate(
            input_ids=input_ids,
            pixel_values=pixel_values,
            max_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    expected_tokens = expected.sequences[0, input_ids.shape[1] :].tolist()
    tokens = greedy_tokens(unpruned, input_ids, pixel_values, steps)
    assert len(expected_tokens) == steps  # no early end of sequence: all 16 steps are compared
    assert tokens == expected_tokens
    assert len(set(tokens)) > 4  # the random model does not repeat one token

    # Every step's logits, not only their argmax.
    with torch.no_grad():
        logits, _, _, cache = unpruned.session.prefill_module(*embed(unpruned, input_ids, pixel_values))
        for step, token in enumerate(expected_tokens):
            torch.testing.assert_close(logits, expected.logits[step], atol=ATOL, rtol=0)
            position = decode_position(input_ids.shape[1] + step)
            token_embeds = unpruned.session.embedding(torch.tensor([[token]]))
            logits, cache = unpruned.session.decode_module(token_embeds, position, cache)


def test_pruned_prefill_matches_hand_composition(tiny, pruned, embedded, pruned_prefill):
    inputs_embeds, _, image_positions = embedded
    image_start = image_positions[0]
    logits, kept, _, cache = pruned_prefill
    expected_logits, expected_kept, expected_cache = reference_pruned_logits(
        tiny.model,
        inputs_embeds,
        int(image_start),
        grid=tiny.spec.grid,
        keep=pruned.keep,
        prune_layer=tiny.spec.prune_layer,
    )
    assert torch.equal(kept, expected_kept)
    assert kept.shape == (64,) and bool((kept[1:] > kept[:-1]).all())
    torch.testing.assert_close(logits, expected_logits[:, -1], atol=ATOL, rtol=0)

    seq_len, dropped = inputs_embeds.shape[1], 576 - pruned.keep
    for i, ((key, value), layer) in enumerate(zip(cache, expected_cache.layers)):
        length = seq_len if i < tiny.spec.prune_layer else seq_len - dropped
        assert key.shape[2] == value.shape[2] == length
        torch.testing.assert_close(key, layer.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(value, layer.values, atol=ATOL, rtol=0)


def test_pruned_prefill_with_the_image_further_in(tiny, pruned, image):
    """A system prompt before the conversation moves the image block; the offset follows the ids."""
    text = "A chat between a curious user and an artificial intelligence assistant. " + tiny.spec.format_prompt("Why?")
    processed = tiny.processor(images=image, text=text, return_tensors="pt")
    inputs_embeds, position_ids, image_positions = embed(pruned, processed["input_ids"], processed["pixel_values"])
    image_start = image_positions[0]
    assert int(image_start) > 10
    with torch.no_grad():
        logits, kept, _, cache = pruned.session.prefill_module(inputs_embeds, position_ids, image_positions)
    expected_logits, expected_kept, _ = reference_pruned_logits(
        tiny.model,
        inputs_embeds,
        int(image_start),
        grid=tiny.spec.grid,
        keep=pruned.keep,
        prune_layer=tiny.spec.prune_layer,
    )
    assert torch.equal(kept, expected_kept)
    torch.testing.assert_close(logits, expected_logits[:, -1], atol=ATOL, rtol=0)
    assert cache[-1][0].shape[2] == inputs_embeds.shape[1] - 576 + pruned.keep


def test_pruning_changes_the_output(unpruned, embedded, pruned_prefill):
    with torch.no_grad():
        full_logits, *_ = unpruned.session.prefill_module(*embedded)
    assert (pruned_prefill[0] - full_logits).abs().max() > 1e-2


def test_decode_steps_match_recomputation_without_cache(tiny, pruned, embedded, pruned_prefill):
    inputs_embeds, _, image_positions = embedded
    image_start = image_positions[0]
    logits, kept, _, cache = pruned_prefill
    seq_len = inputs_embeds.shape[1]
    sequence = inputs_embeds
    for step in range(DECODE_STEPS):
        with torch.no_grad():
            token_embeds = pruned.session.embedding(logits.argmax(dim=-1, keepdim=True))  # [1, 1, d]
            logits, cache = pruned.session.decode_module(token_embeds, decode_position(seq_len + step), cache)
        sequence = torch.cat([sequence, token_embeds], dim=1)
        expected, expected_kept, _ = reference_pruned_logits(
            tiny.model,
            sequence,
            int(image_start),
            grid=tiny.spec.grid,
            keep=pruned.keep,
            prune_layer=tiny.spec.prune_layer,
        )
        assert torch.equal(expected_kept, kept)
        torch.testing.assert_close(logits, expected[:, -1], atol=ATOL, rtol=0)

    lengths = [key.shape[2] for key, _ in cache]
    full, short = seq_len + DECODE_STEPS, seq_len - 576 + pruned.keep + DECODE_STEPS
    prune_layer = tiny.spec.prune_layer
    assert lengths == [full] * prune_layer + [short] * (tiny.spec.text.num_hidden_layers - prune_layer)


def test_decode_into_buffers_equals_decode_onto_the_cache(pruned, pruned_prefill):
    """The ONNX decode graph's form (`cache_lengths`: fixed-capacity buffers written at each layer's
    length, what ONNX Runtime does in place) gives the same logits and the same cache entries."""
    logits, _, _, cache = pruned_prefill
    lengths = torch.tensor([key.shape[2] for key, _ in cache])
    room = 3
    buffers = tuple(
        tuple(torch.cat([entry, torch.full((*entry.shape[:2], room, entry.shape[3]), float("nan"))], dim=2) for entry in pair)
        for pair in cache
    )  # what lies past the written entries must not matter: NaN
    seq_len = int(lengths[0])
    decode = pruned.session.decode_module
    for step in range(room):
        with torch.no_grad():
            token_embeds = pruned.session.embedding(logits.argmax(dim=-1, keepdim=True))
            logits, cache = decode(token_embeds, decode_position(seq_len + step), cache)
            buffered_logits, buffers = decode(token_embeds, decode_position(seq_len + step), buffers, lengths + step)
        torch.testing.assert_close(buffered_logits, logits, atol=0, rtol=0)
        for (key, value), (key_buffer, value_buffer) in zip(cache, buffers, strict=True):
            assert torch.equal(key_buffer[:, :, : key.shape[2]], key) and torch.equal(value_buffer[:, :, : value.shape[2]], value)
    with pytest.raises(ValueError, match="no room"):
        decode(token_embeds, decode_position(seq_len + room), buffers, lengths + room)


def test_generate_returns_text_and_kept_tokens(tiny, pruned, image, prompt):
    result = pruned.generate(image, prompt, max_new_tokens=5)
    assert len(result.token_ids) == 5
    assert result.text == tiny.processor.decode(result.token_ids, skip_special_tokens=True)
    assert len(result.kept_indices) == 64
    assert result.kept_indices == sorted(set(result.kept_indices))


def test_generate_stops_at_end_of_sequence(tiny, unpruned, inputs, monkeypatch):
    tokens = greedy_tokens(unpruned, *inputs, 6)
    # Declare the third generated token the end of sequence: generation ends right after it.
    eos = tokens[2]
    monkeypatch.setattr(tiny.model.generation_config, "eos_token_id", eos)
    stopped = greedy_tokens(EagerModel.from_loaded(tiny), *inputs, 6)
    assert stopped == tokens[: tokens.index(eos) + 1]
    assert len(stopped) < len(tokens)


def test_export_unpruned_prefill_and_decode_with_dynamic_lengths(unpruned, inputs):
    """Exportability of the interface; the pruned prefill is exported by the export tests."""
    embeds, position_ids, image_positions = embed(unpruned, *inputs)
    seq_len = embeds.shape[1]
    prefill_module, decode_module = unpruned.session.prefill_module, unpruned.session.decode_module
    with torch.no_grad():
        seq_len_dim = Dim("T", min=577, max=4096)
        prefill = export(
            prefill_module,
            (embeds, position_ids, image_positions),
            dynamic_shapes=({1: seq_len_dim}, {2: seq_len_dim}, None),
            strict=False,
        ).module()
        longer = torch.cat([embeds, embeds[:, -3:]], dim=1)
        for sequence in (embeds, longer):
            positions = torch.arange(sequence.shape[1])[None, None]
            expected = prefill_module(sequence, positions, image_positions)
            got = prefill(sequence, positions, image_positions)
            torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
            assert [k.shape[2] for k, _ in got[3]] == [sequence.shape[1]] * len(got[3])

        *_, cache = prefill_module(embeds, position_ids, image_positions)
        length = Dim("cache", min=2, max=4096)
        step_args = (embeds[:, -1:], decode_position(seq_len), cache)
        cache_dims = tuple(({2: length}, {2: length}) for _ in cache)
        decode = export(decode_module, step_args, dynamic_shapes=(None, None, cache_dims), strict=False).module()
        for past in (cache, tuple((k[:, :, :-5], v[:, :, :-5]) for k, v in cache)):
            args = (embeds[:, -1:], decode_position(seq_len), past)
            expected, got = decode_module(*args), decode(*args)
            torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
            assert got[1][0][0].shape[2] == past[0][0].shape[2] + 1


@pytest.mark.parametrize("keep", [0, 577, 64.0])
def test_keep_out_of_range_is_rejected(tiny, keep):
    with pytest.raises(ValueError, match="keep must be an integer in"):
        Prefill(tiny.model, grid=tiny.spec.grid, keep=keep, prune_layer=tiny.spec.prune_layer)
