"""Parity criteria per (backend, quantization), and the eager reference rebuilt from a manifest."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_for_export
from models.quantize import Quantization
from tests.quantization import model_quantization
from runtime.artifact import load_artifact
from runtime.backends import BACKENDS
from runtime.generate import GenerationConfig, InputProcessor
from runtime.parity import (
    MIN_KEPT_OVERLAP,
    NOISE_MARGIN,
    PREFILL_NOISE_PER_SQRT_LAYER,
    PREFILL_NOISE_PER_SQRT_LAYER_INT8_VISION,
    STATISTICAL,
    TOLERANCES,
    BackendParity,
    check_parity,
    load_reference,
    statistical_tolerance,
)
from runtime.samples import DEFAULT_PROMPT

EAGER_TOKENS = [5, 6, 7, 8]


def backend_parity(*, exact: bool, **changes) -> BackendParity:
    """A passing result (exact or statistical) with `changes` applied."""
    fields = dict(
        backend="onnx" if exact else "executorch",
        exact=exact,
        tolerance=1e-4 if exact else 0.5,
        kept_indices_equal=True,
        kept_overlap=1.0,
        selection_forced=False,
        prefill_logits_max_abs=1e-5,
        decode_logits_max_abs=[1e-5, 2e-5],
        tokens=EAGER_TOKENS,
        eager_tokens=EAGER_TOKENS,
    )
    return BackendParity(**{**fields, **changes})


def edited_copy(folder: Path, destination: Path, **model_fields) -> Path:
    """A copy of an artifact folder whose manifest `model` has `model_fields`."""
    copy = shutil.copytree(folder, destination)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"].update(model_fields)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_every_backend_and_quantization_has_criteria():
    cases = {(backend, q.value) for backend in BACKENDS for q in Quantization}
    assert TOLERANCES.keys() | STATISTICAL == cases and not TOLERANCES.keys() & STATISTICAL
    assert STATISTICAL == {("executorch", "int4"), ("executorch", "int8")}
    assert TOLERANCES["onnx", "int4"] == TOLERANCES["onnx", "none"]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"kept_indices_equal": False},
        {"tokens": [5, 6, 9, 8]},
        {"decode_logits_max_abs": [1e-5, 2e-4]},
    ],
)
def test_exact_criteria(changes):
    result = backend_parity(exact=True, **changes)
    assert result.passed is (not changes)
    assert result.to_dict()["passed"] is result.passed


@pytest.mark.parametrize(
    ("changes", "passed"),
    [
        ({}, True),
        # Later tokens, the exact kept set and decode logits are not held.
        ({"kept_indices_equal": False, "kept_overlap": MIN_KEPT_OVERLAP, "tokens": [5, 0, 0, 0]}, True),
        ({"decode_logits_max_abs": [3.0]}, True),
        # The first token is the argmax of the prefill logits, which are held: noise flips it too.
        ({"tokens": [0, 6, 7, 8]}, True),
        ({"kept_overlap": MIN_KEPT_OVERLAP - 0.01}, False),
        ({"prefill_logits_max_abs": 0.6}, False),
    ],
)
def test_statistical_criteria(changes, passed):
    assert backend_parity(exact=False, **changes).passed is passed


def test_statistical_tolerance_grows_with_the_square_root_of_depth():
    logits = np.array([[-2.0, 4.0, 1.0]])
    three = statistical_tolerance(logits, 3)
    assert three == pytest.approx(NOISE_MARGIN * PREFILL_NOISE_PER_SQRT_LAYER * math.sqrt(3) * 4.0)
    assert statistical_tolerance(logits, 12) == pytest.approx(2 * three)
    assert statistical_tolerance(-3 * logits, 3) == pytest.approx(3 * three)  # of the largest magnitude
    ratio = PREFILL_NOISE_PER_SQRT_LAYER_INT8_VISION / PREFILL_NOISE_PER_SQRT_LAYER
    assert statistical_tolerance(logits, 3, int8_vision=True) == pytest.approx(ratio * three)


def test_reference_of_a_random_weight_artifact_is_rebuilt_from_its_seed(artifact_dirs, tmp_path):
    folder = edited_copy(artifact_dirs[64], tmp_path / "random", source="random", checkpoint=None, seed=5)
    reference = load_reference(load_artifact(folder))
    expected = load_for_export("tiny-llava", quantization=Quantization.NONE, seed=5).model.state_dict()
    assert reference.keep == 64
    assert all(torch.equal(value, expected[key]) for key, value in reference.model.state_dict().items())


def test_reference_has_the_artifacts_quantization(artifact_dirs, tmp_path):
    folder = edited_copy(
        artifact_dirs[64], tmp_path / "int8", source="random", checkpoint=None, seed=0, quantization="int8"
    )
    assert model_quantization(load_reference(load_artifact(folder)).model) is Quantization.INT8


def test_reference_needs_a_checkpoint(artifact_dirs, tmp_path):
    """A model with downloadable weights (unlike tiny-llava, rebuilt from its recipe) needs its checkpoint."""
    folder = edited_copy(artifact_dirs[64], tmp_path / "nowhere", name="llava-1.5-7b", checkpoint=None)
    with pytest.raises(ValueError, match="names no checkpoint"):
        load_reference(load_artifact(folder))


def test_unknown_quantization_has_no_criteria(artifact_dirs, tmp_path):
    folder = edited_copy(artifact_dirs[64], tmp_path / "int2", quantization="int2")
    with pytest.raises(ValueError, match="no parity criteria for onnx with int2 weights"):
        check_parity(folder, backends=["onnx"])


@pytest.mark.parametrize(("small_bytes", "loads"), [(4 * 1024**3, 1), (0, 2)], ids=["small-kept", "large-reloaded"])
def test_a_statistical_backend_that_kept_other_tokens_is_compared_on_its_tokens(
    artifact_dirs, monkeypatch, small_bytes, loads
):
    """Its logits and tokens are compared with eager made to keep the same tokens, its selection by
    the overlap. The backend here is eager itself made to keep half of eager's tokens and 32 others:
    on one selection the two agree bit for bit. The reference is loaded from the manifest; a small
    one is kept for the forced run, a large one freed before the backend runs and loaded again."""
    import runtime.parity as parity

    loaded = []
    monkeypatch.setattr(parity, "SMALL_REFERENCE_BYTES", small_bytes)
    monkeypatch.setattr(parity, "load_reference", lambda *args: loaded.append(1) or load_reference(*args))

    folder = artifact_dirs[64]
    artifact = load_artifact(folder)
    backend_model = load_reference(artifact)
    processor = InputProcessor.from_artifact(artifact)
    inputs = processor(processor.family.sample(), DEFAULT_PROMPT)
    own = backend_model.generate_ids(inputs.input_ids, inputs.pixel_values, GenerationConfig(max_new_tokens=1))
    others = sorted(set(range(artifact.num_image_tokens)) - set(own.kept_indices))[:32]
    kept = sorted(own.kept_indices[:32] + others)

    class OtherSelection:
        def __init__(self, *args, **kwargs):
            pass

        def generate_ids(self, input_ids, pixel_values, config):
            with backend_model.session.selection_forced((kept, kept[::-1])):
                return backend_model.generate_ids(input_ids, pixel_values, config)

    monkeypatch.setattr(parity, "Runner", OtherSelection)
    monkeypatch.setattr(parity, "_held_exact", lambda backend, artifact: False)
    (result,) = check_parity(folder, backends=["onnx"], steps=4).backends
    assert result.selection_forced and not result.kept_indices_equal and result.kept_overlap == 0.5
    assert result.prefill_logits_max_abs == 0.0 and result.decode_logits_max_abs == [0.0] * 3 and result.tokens_equal
    assert not result.passed  # half the tokens shared: the selection fails the overlap
    assert len(loaded) == loads
