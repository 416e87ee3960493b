"""The selection methods inside the models (`models.selectors`) against transformers and the
references of `pruning_graph`, on tiny-llava: FastV's attention scores, DART's normalised states
and pivots, each prefill baseline's pruned prefill against a hand composition of transformers'
layers, and DivPrune in the vision graph against transformers' LLaVA fed the kept tokens."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from torch import Tensor

from models import LoadedModel, Prefill, load_model
from models.selectors import LayerOutputs, PrefillSelector, get_method, method_names
from pruning_graph import (
    dart_reference,
    dart_reference_order,
    divprune_reference,
    divprune_reference_order,
    divprune_select,
    fastv_reference,
    fastv_reference_order,
    reference_order,
)
from runtime.contract import SELECTION_GRAPHS
from runtime.eager import EagerModel
from runtime.generate import GenerationConfig
from tests.models.conftest import embed
from tests.models.test_llava import ATOL, reference_pruned_logits

KEEP = 64


class Recording(PrefillSelector):
    """A selector that records what layer K-1 handed it, then selects as `inner` does."""

    def __init__(self, inner: PrefillSelector):
        super().__init__()
        self.inner = inner
        self.seen: LayerOutputs | None = None

    def forward(self, outputs: LayerOutputs) -> tuple[Tensor, Tensor, Tensor]:
        self.seen = outputs
        return self.inner(outputs)


@pytest.fixture(scope="module")
def tiny_copy(tiny_dir) -> LoadedModel:
    """tiny-llava with a final norm whose weight is not all ones (as built it is, and the cosines
    DART takes would not see the norm)."""
    loaded = load_model("tiny-llava", tiny_dir, dtype=torch.float32)
    norm = loaded.model.model.language_model.norm
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=torch.Generator().manual_seed(0)) + 0.5)
    return loaded


@pytest.fixture(scope="module")
def embedded(tiny_copy, inputs) -> tuple[Tensor, Tensor, Tensor]:
    """The prefill's inputs for the test prompt: embeds [1, T, d], position ids [1, 1, T], image positions [N]."""
    return embed(EagerModel.from_loaded(tiny_copy), *inputs)


@pytest.fixture(scope="module")
def transformers_run(tiny_copy, embedded):
    """transformers' language model on the test prompt, eager attention (the one that returns its
    weights): its attentions, hidden states and cache (post-RoPE keys) of every layer."""
    model = tiny_copy.model
    default = model.config.text_config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model.model.language_model(
                inputs_embeds=embedded[0],
                position_ids=embedded[1][0],
                use_cache=True,
                output_attentions=True,
                output_hidden_states=True,
            )
    finally:  # the hand composition calls the layers without a mask: causal only with sdpa
        model.set_attn_implementation(default)
    return out, model.model.language_model.norm


@pytest.fixture(scope="module")
def recorded(tiny_copy, embedded):
    """method -> (the eager prefill's outputs at keep 64, what its selector saw)."""

    @cache
    def run(method: str):
        model = EagerModel.from_loaded(tiny_copy, keep=KEEP, method=get_method(method))
        prefill = model.session.prefill_module
        prefill.selector = Recording(prefill.selector)
        with torch.no_grad():
            outputs = prefill(*embedded)
        return outputs, prefill.selector.seen

    return run


def _reference_kept(method: str, transformers_run, embedded, layer: int) -> Tensor:
    """The reference selection on transformers' own tensors of layer K-1."""
    out, norm = transformers_run
    image = embedded[2]
    if method == "fastv":
        return fastv_reference(out.attentions[layer][0, :, -1].index_select(1, image), KEEP)
    keys = out.past_key_values.layers[layer].keys[0]  # [n_kv_heads, T, head_dim]
    keys = keys.transpose(0, 1).reshape(keys.shape[1], -1)  # [T, dk]
    with torch.no_grad():
        normed = norm(out.hidden_states[layer + 1])[0]  # layer K-1's output, final-normed
    after = slice(int(image[-1]) + 1, None)
    return dart_reference(keys[image], normed[image], keys[after], normed[after], KEEP)


def test_methods_are_registered_by_name():
    assert method_names() == ["vlm-pruner", "dart", "divprune", "fastv"]
    with pytest.raises(ValueError, match="unknown selection method 'nope'; methods: vlm-pruner, dart, divprune, fastv"):
        get_method("nope")
    with pytest.raises(ValueError, match="do not fit the fastv method"):
        get_method("fastv", {"kappa": 4})
    # Where each selects: graphs of the artifact contract, which the torch-free runtime reads.
    graphs = {name: get_method(name).selection_graph for name in method_names()}
    assert graphs == {"vlm-pruner": "prefill", "dart": "prefill", "divprune": "vision_encoder", "fastv": "prefill"}
    assert set(graphs.values()) == set(SELECTION_GRAPHS)


def test_fastv_scores_are_transformers_attention_weights(tiny, recorded, transformers_run, embedded):
    _, seen = recorded("fastv")
    out, _ = transformers_run
    expected = out.attentions[tiny.spec.prune_layer - 1][0, :, -1].index_select(1, embedded[2])  # [heads, N]
    torch.testing.assert_close(seen.last_token_attention(), expected, atol=1e-6, rtol=0)


def test_dart_states_are_the_final_norm_of_layer_k_minus_1(tiny, recorded, transformers_run):
    _, seen = recorded("dart")
    out, norm = transformers_run
    with torch.no_grad():
        expected = norm(out.hidden_states[tiny.spec.prune_layer])[0]  # hidden_states[K]: layer K-1's output
    torch.testing.assert_close(seen.normed_states(), expected, atol=ATOL, rtol=0)
    after = seen.after_image()
    assert after.sum() == seen.hidden.shape[1] - 1 - int(seen.image_positions[-1]) >= 4


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_kept_tokens_equal_the_reference_on_transformers_tensors(tiny, method, recorded, transformers_run, embedded):
    (_, kept, _, _), _ = recorded(method)
    expected = _reference_kept(method, transformers_run, embedded, tiny.spec.prune_layer - 1)
    assert kept.tolist() == expected.tolist()


def _reference_order(method: str, seen: LayerOutputs, grid: tuple[int, int]) -> Tensor:
    """The reference's selection order on what the selector was handed."""
    if method == "vlm-pruner":
        return reference_order(seen.image_keys(), seen.image_states(), grid, KEEP)
    if method == "fastv":
        return fastv_reference_order(seen.last_token_attention(), KEEP)
    keys, normed, image, after = seen.token_keys(), seen.normed_states(), seen.image_positions, seen.after_image()
    return dart_reference_order(keys[image], normed[image], keys[after], normed[after], KEEP)


@pytest.mark.parametrize("method", ["vlm-pruner", "fastv", "dart"])
def test_selection_order_is_the_references(tiny, method, recorded):
    """The prefill's second selection output: the kept tokens in the order the method chose them."""
    (_, kept, order, _), seen = recorded(method)
    with torch.no_grad():
        expected = _reference_order(method, seen, tiny.spec.grid)
    assert order.tolist() == expected.tolist()
    assert sorted(order.tolist()) == kept.tolist() and order.tolist() != kept.tolist()


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_pruned_prefill_equals_transformers_layers_composed_by_hand(tiny, tiny_copy, method, recorded, embedded):
    """No fusion: the kept tokens enter layer K unchanged, at their original positions."""
    (logits, kept, _, cache), _ = recorded(method)
    image_start = int(embedded[2][0])
    expected_logits, _, expected_cache = reference_pruned_logits(
        tiny_copy.model,
        embedded[0],
        image_start,
        grid=tiny.spec.grid,
        keep=KEEP,
        prune_layer=tiny.spec.prune_layer,
        select=lambda keys, states, keep: (kept, states[kept]),
    )
    torch.testing.assert_close(logits, expected_logits[:, -1], atol=ATOL, rtol=0)
    for layer, (key, value) in enumerate(cache):
        torch.testing.assert_close(key, expected_cache.layers[layer].keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(value, expected_cache.layers[layer].values, atol=ATOL, rtol=0)


def test_dart_refuses_a_prompt_with_fewer_than_4_tokens_after_the_image(tiny, inputs):
    model = EagerModel.from_loaded(tiny, keep=KEEP, method=get_method("dart"))
    input_ids, pixel_values = (x.numpy() for x in inputs)
    last_image = int(np.flatnonzero(input_ids[0] == tiny.spec.image_token_id)[-1])
    for after in (0, 3):
        short = input_ids[:, : last_image + 1 + after]
        with pytest.raises(ValueError, match=f"at least 4 prompt tokens after the image .*, the prompt has {after}"):
            model.inputs.prepare(short, pixel_values)
    assert model.inputs.prepare(input_ids[:, : last_image + 5], pixel_values).num_tokens == last_image + 5
    # Unpruned, or another method: no such need.
    EagerModel.from_loaded(tiny, method=get_method("dart")).inputs.prepare(input_ids[:, : last_image + 1], pixel_values)


def test_divprune_selects_in_the_vision_graph(tiny, inputs):
    """The vision graph's kept tokens are `divprune_select` (= the reference) of the encoder's output,
    its embeddings theirs; the prefill is an unpruned one of R image tokens."""
    family, method = tiny.spec.model_family, get_method("divprune")
    graph = family.vision_graph(tiny.model, tiny.spec, keep=KEEP, method=method).eval()
    _, pixel_values = inputs
    with torch.no_grad():
        embeds, kept, order = graph(pixel_values)
        full = family.vision_encoder(tiny.model, tiny.spec).eval()(pixel_values)
    assert kept.tolist() == divprune_select(full, KEEP).tolist() == divprune_reference(full, KEEP).tolist()
    assert order.tolist() == divprune_reference_order(full, KEEP).tolist()
    torch.testing.assert_close(embeds, full[kept], atol=0, rtol=0)
    prefill = family.prefill(tiny.model, tiny.spec, keep=KEEP, method=method)
    assert prefill.selector is None and prefill.num_image_tokens == KEEP
    with pytest.raises(ValueError, match="divprune selects in the vision_encoder graph, not in the prefill"):
        Prefill(tiny.model, grid=tiny.spec.grid, keep=KEEP, prune_layer=tiny.spec.prune_layer, method=method)


def test_divprune_model_is_transformers_llava_fed_the_kept_tokens(tiny, image, prompt):
    """DivPrune as its released code runs it: the prompt holds R image placeholders, filled with the
    kept tokens' features, at contiguous positions, through transformers' unchanged LLaVA."""
    model = EagerModel.from_loaded(tiny, keep=KEEP, method=get_method("divprune"))
    input_ids, pixel_values = model.prepare_inputs(image, prompt)
    image_rows = input_ids[0] == tiny.spec.image_token_id
    assert image_rows.sum() == KEEP
    config = GenerationConfig(max_new_tokens=4, ignore_eos=True, return_logits=True)
    result = model.generate_ids(input_ids, pixel_values, config)
    with torch.no_grad():
        features = tiny.model.model.get_image_features(pixel_values=torch.from_numpy(pixel_values)).pooler_output[0]
        kept = divprune_reference(features, KEEP)
        embeds = tiny.model.get_input_embeddings()(torch.from_numpy(input_ids))
        embeds[0, torch.from_numpy(image_rows)] = features[kept]
        logits = tiny.model(inputs_embeds=embeds).logits[0, -1]
        tokens = tiny.model.generate(inputs_embeds=embeds, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert result.kept_indices == kept.tolist()
    torch.testing.assert_close(torch.from_numpy(result.logits[0]), logits, atol=ATOL, rtol=0)
    assert result.token_ids == tokens[0].tolist()


@pytest.mark.parametrize("method", ["vlm-pruner", "dart", "divprune", "fastv"])
def test_forced_selection_of_the_methods_own_choice_changes_nothing(tiny, image, prompt, method):
    """Eager made to keep the tokens it chose itself, in its order, generates bit for bit as it does
    unforced (VLM-Pruner's fusion recomputed for the given tokens included); made to keep others, it
    reports and runs those (`runtime.parity` compares a backend that chose others this way)."""
    model = EagerModel.from_loaded(tiny, keep=KEEP, method=get_method(method))
    inputs = model.prepare_inputs(image, prompt)
    config = GenerationConfig(max_new_tokens=3, ignore_eos=True, return_logits=True)
    own = model.generate_ids(*inputs, config)
    with model.session.selection_forced((own.kept_indices, own.selection_order)):
        forced = model.generate_ids(*inputs, config)
    assert (forced.kept_indices, forced.selection_order, forced.token_ids) == (own.kept_indices, own.selection_order, own.token_ids)
    assert all(np.array_equal(a, b) for a, b in zip(forced.logits, own.logits))

    others = sorted(set(range(tiny.spec.num_image_tokens)) - set(own.kept_indices))[:KEEP]
    with model.session.selection_forced((others, others[::-1])):
        moved = model.generate_ids(*inputs, config)
    assert (moved.kept_indices, moved.selection_order) == (others, others[::-1])
    assert not np.array_equal(moved.logits[0], own.logits[0])
    assert model.generate_ids(*inputs, config).kept_indices == own.kept_indices  # the method's selector is back


def test_forced_selection_is_checked(tiny):
    pruned = EagerModel.from_loaded(tiny, keep=KEEP).session
    with pytest.raises(ValueError, match="holds 64 tokens, got 2 and 2"):
        with pruned.selection_forced(([0, 1], [1, 0])):
            pass
    with pytest.raises(ValueError, match="order must hold the kept tokens"):
        with pruned.selection_forced((list(range(KEEP)), list(range(1, KEEP + 1)))):
            pass
    with pytest.raises(ValueError, match="keeps every image token"):
        with EagerModel.from_loaded(tiny).session.selection_forced(([0], [0])):
            pass
