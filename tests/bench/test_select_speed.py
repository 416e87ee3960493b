"""The selection bench feeds each method what it reads in the model: its static module on the bench's
inputs gives the reference's tokens (the timings themselves are the bench's, not a test's)."""

from __future__ import annotations

import pytest
import torch

from bench.select_speed import selection_case
from export.options import METHOD_NAMES


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_case_selects_as_its_reference(method):
    case = selection_case(method, 576)
    with torch.inference_mode():
        static = case.module.eval()(*case.inputs)
        reference = case.reference()
    kept = static[0] if isinstance(static, tuple) else static
    expected = reference[0] if isinstance(reference, tuple) else reference
    assert kept.shape == (64,) and kept.tolist() == expected.tolist()


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        selection_case("nope", 576)
