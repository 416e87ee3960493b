"""Artifacts on ONNX Runtime and ExecuTorch against the eager pruned model: parity and generated text."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from runtime.generate import GenerationConfig, Runner
from runtime.parity import check_parity, main as parity_main
from runtime.samples import DEFAULT_PROMPT

KEEPS = (64, 192, 576)
BACKENDS = ("onnx", "executorch")


@pytest.fixture(scope="module", params=KEEPS, ids=lambda keep: f"keep{keep}")
def parity(request, artifact_dirs, eager):
    keep = request.param
    return check_parity(artifact_dirs[keep], reference=eager(keep))


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity(parity, backend):
    result = {b.backend: b for b in parity.backends}[backend]
    assert result.exact and result.kept_indices_equal and result.kept_overlap == 1.0
    assert result.tokens_equal and len(result.tokens) == 16
    assert result.tolerance == {"onnx": 1e-4, "executorch": 1e-3}[backend]
    assert result.logits_max_abs <= result.tolerance, result.to_dict()
    assert result.passed


def test_parity_report(parity):
    assert parity.input_ids_equal and parity.pixel_values_max_abs <= 1e-5
    assert parity.quantization == "none" and parity.passed
    report = json.loads(json.dumps(parity.to_dict()))
    assert report["passed"] is True and set(report["backends"]) == set(BACKENDS)
    assert report["quantization"] == "none" and all(b["exact"] for b in report["backends"].values())
    assert len(report["backends"]["onnx"]["decode_logits_max_abs"]) == 15


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keep", KEEPS)
def test_text_equals_eager(keep, backend, artifact_dirs, eager, image):
    expected = eager(keep).generate(image, DEFAULT_PROMPT, max_new_tokens=24)
    result = Runner(artifact_dirs[keep], backend).generate(image, DEFAULT_PROMPT, GenerationConfig(max_new_tokens=24))
    assert result.text == expected.text
    assert result.token_ids == expected.token_ids
    assert result.kept_indices == expected.kept_indices
    stats = result.stats
    assert stats.num_generated_tokens == len(result.token_ids)
    assert stats.time_to_first_token_ms >= stats.vision_ms + stats.prefill_ms > 0


# What a low-memory session has loaded after a generation: ONNX Runtime keeps the graph it ran
# last of those it opens one at a time; ExecuTorch has released the vision encoder.
LOADED_AFTER = {"onnx": lambda s: set(s._sessions) == {"embed_tokens", "decode"},
                "executorch": lambda s: "vision_encoder" not in s._methods and "text_decoder_tail" in s._methods}


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_memory_same_outputs(artifact_dirs, image, backend):
    """ONNX Runtime: one vision / prefill / decode session open at a time; ExecuTorch: the vision
    encoder loaded for each image, the language model at the first prefill. Logits bit-identical,
    in every generation."""
    config = GenerationConfig(max_new_tokens=8, ignore_eos=True, return_logits=True)
    expected = Runner(artifact_dirs[64], backend).generate(image, DEFAULT_PROMPT, config)
    runner = Runner(artifact_dirs[64], backend, low_memory=True)
    loaded = runner.session._sessions if backend == "onnx" else runner.session._methods
    assert "vision_encoder" not in loaded and "decode" not in loaded and "text_decoder_head" not in loaded
    for _ in range(2):
        result = runner.generate(image, DEFAULT_PROMPT, config)
        assert LOADED_AFTER[backend](runner.session)
        assert result.token_ids == expected.token_ids and result.kept_indices == expected.kept_indices
        assert all(np.array_equal(a, b) for a, b in zip(result.logits, expected.logits, strict=True))


def test_executorch_cache_room_counts_the_pruned_prompt(artifact_dirs, image):
    """The layers from the pruning layer on hold the prompt without its N - R dropped image tokens:
    a cache with room for that (and not for the whole prompt) serves the generation; one token
    more than the room is refused before ExecuTorch would write past the end."""
    from runtime.backends.executorch import CachePosition

    config = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    runner = Runner(artifact_dirs[64], "executorch")
    expected = runner.generate(image, DEFAULT_PROMPT, config)
    inputs = runner.inputs(image, DEFAULT_PROMPT)
    dropped = runner.artifact.num_image_tokens - 64
    short = inputs.num_tokens - dropped + config.max_new_tokens - 1  # the last token is not written
    assert short < inputs.num_tokens
    runner.session._capacity = CachePosition(inputs.num_tokens + 8, short)
    assert runner.generate(image, DEFAULT_PROMPT, config).token_ids == expected.token_ids
    runner.session._capacity = CachePosition(inputs.num_tokens + 8, short - 1)
    with pytest.raises(ValueError, match="no room for 1 [(]1[)] more after"):
        runner.generate(image, DEFAULT_PROMPT, config)


def test_cache_buffers_that_grow_give_the_same_logits(artifact_dirs, image, monkeypatch):
    """ONNX Runtime's decode writes into buffers with room for CACHE_GROWTH more entries, copied
    into larger ones when full: growing every 3 tokens changes no logit."""
    import runtime.backends.onnx as onnx_backend

    config = GenerationConfig(max_new_tokens=10, ignore_eos=True, return_logits=True)
    expected = Runner(artifact_dirs[64], "onnx").generate(image, DEFAULT_PROMPT, config)
    monkeypatch.setattr(onnx_backend, "CACHE_GROWTH", 3)
    result = Runner(artifact_dirs[64], "onnx").generate(image, DEFAULT_PROMPT, config)
    assert result.token_ids == expected.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(result.logits, expected.logits, strict=True))


def test_image_path_and_stop_at_eos(artifact_dirs, image, tmp_path):
    runner = Runner(artifact_dirs[64], "onnx")
    path = tmp_path / "image.png"
    image.save(path)
    from_path = runner.generate(path, DEFAULT_PROMPT, GenerationConfig(max_new_tokens=8))
    assert from_path.token_ids == runner.generate(image, DEFAULT_PROMPT, GenerationConfig(max_new_tokens=8)).token_ids
    # Declare the first generated token an end-of-sequence token: generation stops right after it.
    first = from_path.token_ids[0]
    runner.artifact = replace(runner.artifact, text=replace(runner.artifact.text, eos_token_ids=frozenset([first])))
    assert runner.generate(image, DEFAULT_PROMPT, GenerationConfig(max_new_tokens=8)).token_ids == [first]
    forced = runner.generate(image, DEFAULT_PROMPT, GenerationConfig(max_new_tokens=8, ignore_eos=True))
    assert forced.token_ids == from_path.token_ids


@pytest.mark.parametrize(
    "image_arg, prompt, error, message",
    [
        ("missing.png", DEFAULT_PROMPT, FileNotFoundError, "does not exist"),
        ("broken.png", DEFAULT_PROMPT, ValueError, "cannot read image"),
        (None, "", ValueError, "prompt is empty"),
        (None, "   ", ValueError, "prompt is empty"),
    ],
)
def test_bad_inputs(image_arg, prompt, error, message, artifact_dirs, image, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    source = image if image_arg is None else tmp_path / image_arg
    with pytest.raises(error, match=message):
        Runner(artifact_dirs[64], "onnx").generate(source, prompt)


def test_bad_generation_settings(artifact_dirs, image):
    runner = Runner(artifact_dirs[64], "onnx")
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="exceeds the artifact's"):
        runner.generate(image, DEFAULT_PROMPT, GenerationConfig(max_new_tokens=10**6))
    prepared = runner.inputs(image, DEFAULT_PROMPT)
    input_ids, pixel_values = prepared.input_ids, prepared.pixel_values
    with pytest.raises(ValueError, match="pixel_values must be"):
        runner.generate_ids(input_ids, pixel_values[:, :, :100])
    with pytest.raises(ValueError, match="found 0 image tokens"):
        runner.generate_ids(np.ones((1, 10), dtype=np.int64), pixel_values)


def test_parity_cli(artifact_dirs, tmp_path, capsys):
    path = tmp_path / "parity.json"
    assert parity_main([str(artifact_dirs[64]), "--backends", "onnx", "--steps", "4", "--json", str(path)]) == 0
    assert "PASSED" in capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["passed"] and list(report["backends"]) == ["onnx"] and report["steps"] == 4


def test_parity_cli_bad_artifact(tmp_path, capsys):
    assert parity_main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
