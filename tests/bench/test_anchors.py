"""make bench-anchors' own parts: the checkpoint the anchors build from, the prompt they all get,
and how the targets are read off the measurements (the anchors themselves are benchmarks, not tests)."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.anchors import ANCHORS
from bench.anchors.__main__ import targets
from bench.anchors.checkpoint import write_checkpoint
from bench.anchors.environment import anchor_python
from bench.anchors.timing import prompt_ids
from models.registry import get_spec


def test_checkpoint_is_the_models_language_model_in_float16(tmp_path):
    spec = get_spec("tiny-llava")
    path = write_checkpoint("tiny-llava", tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint.partial").exists()
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert model.dtype == torch.float16
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads, config.vocab_size) == (
        spec.text.hidden_size, spec.text.num_hidden_layers, spec.text.num_key_value_heads, spec.text.vocab_size
    )
    assert all(p.float().std() > 0 for name, p in model.named_parameters() if "norm" not in name)
    assert len(AutoTokenizer.from_pretrained(path)) == spec.text.vocab_size


def test_every_anchor_gets_the_same_prompt():
    ids = prompt_ids(590, 32064)
    assert ids == prompt_ids(590, 32064) and len(ids) == 590 and ids[0] == 1
    assert all(3 <= i < 32064 for i in ids[1:])


def test_an_anchor_without_requirements_runs_in_our_interpreter():
    assert str(anchor_python("executorch_llama", list(ANCHORS["executorch_llama"].requirements))) == sys.executable


def _run(prefill_ms, ttft_ms, tokens_per_s):
    return {"prefill_ms": prefill_ms, "time_to_first_token_ms": ttft_ms, "decode_tokens_per_s": tokens_per_s}


def test_targets_compare_each_of_our_backends_with_its_family_and_every_anchor():
    ours = {"results": [
        {"role": "pruned", "backend": "onnx", "keep": 64, "median": _run(800, 1000, 3.0)},
        {"role": "baseline", "backend": "onnx", "keep": 576, "median": _run(4400, 4600, 2.0)},
    ]}
    anchors = {
        "onnxruntime_genai": {"label": "ONNX Runtime GenAI", "median": _run(4000, 4100, 2.5)},
        "llama_cpp": {"label": "llama.cpp", "median": _run(2000, 2100, 4.0)},
    }
    rows = {(row["target"], row["backend"]): (row["ratio"], row["met"]) for row in targets(ours, anchors)}
    assert rows == {
        ("unpruned prefill within 1.15x of the fastest onnx anchor", "onnx"): (pytest.approx(1.1), True),
        ("keep 64 TTFT 3x faster than ONNX Runtime GenAI's unpruned", "onnx"): (pytest.approx(4.1), True),
        ("keep 64 decode at least ONNX Runtime GenAI's", "onnx"): (pytest.approx(1.2), True),
        ("keep 64 TTFT 3x faster than llama.cpp's unpruned", "onnx"): (pytest.approx(2.1), False),
        ("keep 64 decode at least llama.cpp's", "onnx"): (pytest.approx(0.75), False),
    }
