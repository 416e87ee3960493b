"""make bench-noise's parts: the one-ulp nudge of each linear's result, the measures, one depth end to end on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.parity_noise import compare, measure_depth, nudged_linears
from runtime.generate import Greedy


def greedy_result(token_ids, kept, logits) -> Greedy:
    return Greedy(token_ids, kept, kept, [np.asarray(logits, dtype=np.float32)], 0.0, 0.0, 0.0, 0.0)


def test_each_linear_result_moves_one_ulp_each_way():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    x = torch.randn(50, 64)
    first = model[0](x)
    plain = model(x)
    with nudged_linears(model, seed=1):
        inner = model[0](x)
        nudged = model(x)
    step = inner - first
    assert torch.equal(step.abs(), torch.nextafter(first.abs(), torch.tensor(torch.inf)) - first.abs())
    assert (step > 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert not torch.equal(nudged, plain) and torch.allclose(nudged, plain, rtol=1e-5, atol=1e-6)
    assert torch.equal(model(x), plain)  # the hooks are gone


def test_measures():
    reference = greedy_result([5, 6, 7, 8], [1, 2, 3, 4], [[1.0, -4.0, 2.0]])
    nudged = greedy_result([5, 6, 9, 8], [1, 2, 3, 9], [[1.5, -4.0, 2.0]])
    assert compare(reference, nudged) == {"prefill_relative": 0.125, "kept_overlap": 0.75, "leading_tokens_equal": 2}
    assert compare(reference, reference) == {"prefill_relative": 0.0, "kept_overlap": 1.0, "leading_tokens_equal": 4}


def test_one_depth_on_the_tiny_model():
    rows = measure_depth("tiny-llava", 3, seeds=2, keep=64, steps=2)
    assert [(row["layers"], row["seed"]) for row in rows] == [(3, 1), (3, 2)]
    for row in rows:
        assert 0.0 <= row["prefill_relative"] < 1.0 and 0.0 <= row["kept_overlap"] <= 1.0
        assert row["per_sqrt_layer"] == pytest.approx(row["prefill_relative"] / 3**0.5)
        assert row["leading_tokens_equal"] in (0, 1, 2)
