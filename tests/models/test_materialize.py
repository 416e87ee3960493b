"""Block-by-block materialization: coverage of the blocks, seeded fills, casting, transforms."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from transformers import LlavaConfig, LlavaForConditionalGeneration

from models import build_random_model, get_spec
from models.materialize import fill_random, keep_loaded, materialize, weight_blocks

SPEC = get_spec("tiny-llava")


def meta_model(config: LlavaConfig | None = None) -> LlavaForConditionalGeneration:
    """tiny-llava (or `config`) on the meta device: shapes only."""
    with torch.device("meta"):
        return LlavaForConditionalGeneration(config or SPEC.hf_config())


def block_tensors(block: nn.Module, recurse: bool) -> list[torch.Tensor]:
    if recurse:
        return [*block.parameters(), *block.buffers()]
    return [t for t in (*block._parameters.values(), *block._buffers.values()) if t is not None]


def test_blocks_cover_every_parameter_and_buffer_once():
    model = meta_model()
    blocks = weight_blocks(model)
    covered = [id(tensor) for _, block, recurse in blocks for tensor in block_tensors(block, recurse)]
    expected = {id(tensor) for tensor in (*model.parameters(), *model.buffers())}
    assert len(covered) == len(set(covered))
    assert set(covered) == expected


def test_layers_are_whole_blocks_and_children_come_before_parents():
    blocks = weight_blocks(meta_model())
    recursive = [name for name, _, recurse in blocks if recurse]
    assert recursive == [
        *(f"model.vision_tower.encoder.layers.{i}" for i in range(2)),
        *(f"model.language_model.layers.{i}" for i in range(4)),
    ]
    own = [name for name, _, recurse in blocks if not recurse]
    assert {"lm_head", "model.language_model.embed_tokens", "model.language_model.rotary_emb"} <= set(own)
    for index, name in enumerate(own):
        assert not any(child.startswith(name + ".") for child in own[index + 1 :]), f"{name} comes before a child"


def test_fill_random_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first = materialize(meta_model(), fill_random(0)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    again = materialize(meta_model(), fill_random(0)).state_dict()
    other = materialize(meta_model(), fill_random(1)).state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert all(torch.isfinite(value).all() for value in first.values() if value.is_floating_point())
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])
    assert not torch.equal(
        first["model.language_model.layers.0.mlp.up_proj.weight"],
        other["model.language_model.layers.0.mlp.up_proj.weight"],
    )


def test_a_block_gets_the_same_weights_whatever_the_other_blocks():
    full = materialize(meta_model(), fill_random(0)).state_dict()
    # One decoder layer fewer, and the global RNG drawn from between blocks.
    shallow = replace(SPEC, text=replace(SPEC.text, num_hidden_layers=3))
    other = materialize(
        meta_model(shallow.hf_config()), fill_random(0), transform=lambda name, block: torch.rand(100)
    ).state_dict()
    assert set(other) < set(full)
    assert all(torch.equal(full[key], other[key]) for key in other)


def test_buffers_equal_those_of_the_random_model():
    materialized = dict(materialize(meta_model(), fill_random(0)).named_buffers())
    reference = dict(build_random_model("tiny-llava", materialize=True).named_buffers())
    assert set(materialized) == set(reference) >= {
        "model.language_model.rotary_emb.inv_freq",
        "model.vision_tower.embeddings.position_ids",
    }
    for name, buffer in reference.items():
        assert torch.equal(materialized[name], buffer), name


def test_transform_sees_each_block_once_filled_and_cast():
    model = meta_model().half()
    expected = [(name, block) for name, block, _ in weight_blocks(model)]
    seen = []

    def transform(name: str, block: nn.Module) -> None:
        tensors = [*block.parameters(), *(b for b in block.buffers() if b.is_floating_point())]
        assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors), name
        seen.append((name, block))

    result = materialize(model, fill_random(0), transform=transform)
    assert [name for name, _ in seen] == [name for name, _ in expected]
    assert all(block is want for (_, block), (_, want) in zip(seen, expected))
    assert result is model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_is_cast_in_eval_mode_without_grad(dtype):
    model = materialize(meta_model().half(), fill_random(0), dtype=dtype)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert not any(p.requires_grad for p in model.parameters())
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {dtype}
    assert model.model.vision_tower.embeddings.position_ids.dtype == torch.int64


def test_keep_loaded_only_casts():
    model = build_random_model("tiny-llava", materialize=True, dtype=torch.float16)
    expected = {key: value.float() for key, value in model.state_dict().items() if value.is_floating_point()}
    state = materialize(model, keep_loaded).state_dict()
    assert all(torch.equal(state[key], value) for key, value in expected.items())
