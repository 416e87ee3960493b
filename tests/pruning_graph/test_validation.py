"""Bad input gets a ValueError that names the problem."""

from __future__ import annotations

import math

import pytest
import torch

from pruning_graph import VLMPrunerConfig, VLMPrunerSelect, reference_select, select_tokens

KEYS, HIDDEN = torch.randn(144, 16), torch.randn(144, 24)


@pytest.mark.parametrize("select", [select_tokens, reference_select])
@pytest.mark.parametrize(
    "keys, hidden, grid, keep, message",
    [
        (KEYS, HIDDEN, (12, 12), 0, r"keep must be an integer in \[1, N\] = \[1, 144\], got 0"),
        (KEYS, HIDDEN, (12, 12), 145, r"keep must be an integer in \[1, N\] = \[1, 144\], got 145"),
        (KEYS, HIDDEN, (12, 12), 3.0, r"keep must be an integer"),
        (KEYS, HIDDEN, (12, 11), 10, r"grid \(12, 11\) has H\*W = 132 cells but there are 144 image tokens"),
        (KEYS, HIDDEN, (12, 0), 10, r"grid must be a pair of positive integers"),
        (KEYS, HIDDEN, 144, 10, r"grid must be a pair of positive integers"),
        (KEYS, HIDDEN, [], 10, r"grid must be a pair of positive integers \(H, W\), or a non-empty sequence"),
        (KEYS, HIDDEN, [(12, 12), 5], 10, r"or a non-empty sequence of such pairs \(one per view\)"),
        (KEYS, HIDDEN, [(6, 12), (0, 12)], 10, r"view 1 of grid must be a pair of positive integers .*got \(0, 12\)"),
        (KEYS, HIDDEN, [(6, 12), (6, 11)], 10, r"grid \(\(6, 12\), \(6, 11\)\) has the sum of H\*W over its views = 138"),
        (KEYS, HIDDEN, [(6, 12), (6, 12)], 145, r"keep must be an integer in \[1, N\] = \[1, 144\], got 145"),
        (KEYS[None], HIDDEN, (12, 12), 10, r"keys must have shape \[N, features\], got \(1, 144, 16\)"),
        (KEYS, HIDDEN[:, 0], (12, 12), 10, r"hidden must have shape \[N, features\], got \(144,\)"),
        (KEYS, HIDDEN[:100], (12, 12), 10, r"keys has 144 tokens but hidden has 100"),
        (KEYS.long(), HIDDEN, (12, 12), 10, r"keys must be a floating-point tensor"),
        (KEYS, HIDDEN.clone().index_fill_(0, torch.tensor([3]), math.nan), (12, 12), 10, r"hidden contains NaN"),
        (KEYS.clone().index_fill_(0, torch.tensor([3]), math.inf), HIDDEN, (12, 12), 10, r"keys contains NaN"),
    ],
)
def test_bad_input(select, keys, hidden, grid, keep, message):
    with pytest.raises(ValueError, match=message):
        select(keys, hidden, grid, keep)


def test_module_rejects_other_token_count():
    module = VLMPrunerSelect((12, 12), 10)
    with pytest.raises(ValueError, match=r"built for grid \(12, 12\) \(144 tokens\), got 100 tokens"):
        module(KEYS[:100], HIDDEN[:100])
    module = VLMPrunerSelect([(6, 12), (6, 12)], 10)
    with pytest.raises(ValueError, match=r"built for grid \(\(6, 12\), \(6, 12\)\) \(144 tokens\), got 100 tokens"):
        module(KEYS[:100], HIDDEN[:100])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kappa", 0, r"kappa must be an integer >= 1, got 0"),
        ("q", 2.5, r"q must be an integer >= 1"),
        ("block", True, r"block must be an integer >= 1"),
        ("lam", -0.1, r"lam must be >= 0"),
        ("tau_step", 0.0, r"tau_step must be > 0"),
        ("beta", 1.5, r"beta must be in \[0, 1\]"),
        ("tau0", math.nan, r"tau0 must be a finite number"),
        ("tau_step", 1e-4, r"give \d+ greedy passes; at most 64"),
    ],
)
def test_bad_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        VLMPrunerConfig(**{field: value})


def test_default_thresholds_follow_the_fill_rule():
    thresholds = VLMPrunerConfig().thresholds()
    assert len(thresholds) == 9 and thresholds[-1] == math.inf
    assert [round(t, 6) for t in thresholds[:-1]] == [0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
