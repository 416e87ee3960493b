"""Weight quantization of the language model's linears: which weights, their codes and scales, weight-only math."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from models import get_spec
from models.materialize import fill_random, materialize
from models.quantize import (
    GROUP_SIZE,
    VISION_BLOCKS,
    Quantization,
    quantize_block,
    quantized_weights,
    weight_only,
)
from models.random_weights import build_random_model

from tests.quantization import model_quantization

QUANTIZED = (Quantization.INT4, Quantization.INT8)
CODE_RANGE = {Quantization.INT4: (-8, 7), Quantization.INT8: (-128, 127)}


@pytest.fixture(scope="module")
def tiny_model() -> Callable[[Quantization], LlavaForConditionalGeneration]:
    """quantization -> tiny-llava with random weights (seed 0), its linears quantized; built once each."""
    models: dict[Quantization, LlavaForConditionalGeneration] = {}

    def build(quantization: Quantization) -> LlavaForConditionalGeneration:
        if quantization not in models:
            with torch.device("meta"):
                model = LlavaForConditionalGeneration(get_spec("tiny-llava").hf_config())
            transform = partial(quantize_block, quantization=quantization)
            models[quantization] = materialize(model, fill_random(0), transform=transform)
        return models[quantization]

    return build


def quantized_head() -> nn.Linear:
    """A linear quantized as the LM head, 2 groups of 32 input channels."""
    torch.manual_seed(0)
    head = nn.Linear(2 * GROUP_SIZE, 48, bias=False).eval().requires_grad_(False)
    quantize_block("lm_head", head, Quantization.INT4)
    return head


def test_values():
    assert [Quantization(value) for value in ("none", "int4", "int8")] == list(Quantization)


@pytest.mark.parametrize("quantization", QUANTIZED)
def test_only_the_decoder_layers_and_lm_head_are_quantized(tiny_model, quantization):
    model = tiny_model(quantization)
    linears = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (name.startswith("model.language_model.layers.") or name == "lm_head")
    }
    assert len(linears) == 4 * 7 + 1
    assert {name for name, _ in quantized_weights(model)} == linears
    plain = {name: p for name, p in model.named_parameters() if name not in linears}
    assert any(name.startswith("model.vision_tower.") for name in plain)
    assert {"model.multi_modal_projector.linear_1.weight", "model.language_model.embed_tokens.weight"} <= set(plain)
    assert all(type(p) is nn.Parameter and p.dtype == torch.float32 for p in plain.values())
    assert model_quantization(model) is quantization


@pytest.mark.parametrize("quantization", QUANTIZED)
def test_codes_and_scales(tiny_model, quantization):
    low, high = CODE_RANGE[quantization]
    for name, weight in quantized_weights(tiny_model(quantization)):
        out_features, in_features = weight.shape
        assert weight.qdata.dtype == torch.int8 and weight.qdata.shape == (out_features, in_features)
        assert low <= int(weight.qdata.min()) and int(weight.qdata.max()) <= high, name
        assert weight.block_size == (1, GROUP_SIZE) and not weight.zero_point.any()
        assert weight.scale.shape == (out_features, in_features // GROUP_SIZE)
        assert torch.equal(weight.scale, weight.scale.to(torch.bfloat16).float()), f"{name}: scales not bfloat16"
        groups = weight.qdata.float().reshape(out_features, -1, GROUP_SIZE) * weight.scale.unsqueeze(-1)
        assert torch.equal(weight.dequantize(), groups.reshape(out_features, in_features)), name


@pytest.mark.parametrize("model", ["tiny-llava", "tiny-llava-next", "tiny-llava-video", "tiny-qwen2-vl"])
def test_an_int8_vision_tower_is_its_layers_linears_per_output_channel(model):
    """Every family's vision transformer layers (`VISION_BLOCKS`), 8da8w with one float32 scale per
    output channel; patch embedding, projector or merger and the language model untouched."""
    transform = partial(quantize_block, quantization=Quantization.NONE, vision=Quantization.INT8)
    built = materialize(build_random_model(model), fill_random(0), transform=transform)
    layers = {
        f"{name}.weight"
        for name, module in built.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(VISION_BLOCKS)
    }
    assert layers and {name for name, _ in quantized_weights(built)} == layers
    for name, weight in quantized_weights(built):
        out_features, in_features = weight.shape
        assert weight.target_dtype == torch.int8 and weight.block_size == (1, in_features), name
        assert weight.scale.shape == (out_features, 1) and weight.scale.dtype == torch.float32
        assert not weight.zero_point.any() and weight.activation_quantization is not None
        assert int(weight.qdata.abs().max()) == 127  # symmetric: each row's largest weight takes the top code
        torch.testing.assert_close(weight.dequantize(), weight.qdata.float() * weight.scale, atol=0, rtol=0)


def test_the_vision_tower_takes_no_4_bit_weights():
    with pytest.raises(ValueError, match="the vision tower's weights can be none, int8, not int4"):
        quantize_block("model.vision_tower.encoder.layers.0", nn.Linear(32, 32), Quantization.NONE, Quantization.INT4)


def test_weight_only_is_a_float_matmul_on_the_dequantized_weights():
    head = quantized_head()
    x = torch.randn(5, 2 * GROUP_SIZE)
    with weight_only(head):
        weight_only_output = head(x)
    torch.testing.assert_close(weight_only_output, x @ head.weight.dequantize().T, atol=1e-6, rtol=0)
    # Outside the block the activations are quantized again (8da4w).
    assert head.weight.activation_quantization is not None
    assert (head(x) - weight_only_output).abs().max() > 1e-4


def test_weight_only_restores_on_error():
    head = quantized_head()
    mode = head.weight.activation_quantization
    with pytest.raises(RuntimeError, match="inside"), weight_only(head):
        assert head.weight.activation_quantization is None
        raise RuntimeError("inside")
    assert head.weight.activation_quantization == mode


@pytest.mark.parametrize(
    ("name", "quantization"),
    [
        ("lm_head", Quantization.NONE),
        ("model.language_model.layers.0", Quantization.NONE),
        ("model.multi_modal_projector.linear_1", Quantization.INT4),
        ("model.vision_tower.encoder.layers.0", Quantization.INT4),
    ],
)
def test_no_op(name, quantization):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(2 * GROUP_SIZE, 32)).eval()
    weight = block[0].weight
    values = weight.detach().clone()
    quantize_block(name, block, quantization)
    assert block[0].weight is weight and torch.equal(weight, values)
    assert model_quantization(block) is Quantization.NONE
