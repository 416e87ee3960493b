"""make bench-anchors' own parts: the checkpoint the anchors build from, the prompt they all get,
and how the targets are read off the measurements (the anchors themselves are benchmarks, not tests)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.anchors import ANCHORS, executorch_llama
from bench.anchors.__main__ import targets
from bench.anchors.checkpoint import INT4_CONFIG, INT4_GROUP, INT4_LINEARS, write_checkpoint, write_int4_checkpoint
from bench.anchors.onnxruntime_genai import FLOAT_BUILD_BYTES_PER_PARAMETER, builder_input, float_build_bytes
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


def test_int4_checkpoint_holds_the_float16_weights_rounded_to_16_levels(tmp_path):
    source = write_checkpoint("tiny-llava", tmp_path / "checkpoint")
    path = write_int4_checkpoint(source, tmp_path / "int4")
    assert not (tmp_path / "int4.partial").exists()
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"] == INT4_CONFIG
    floats = {k: v for shard in source.glob("*.safetensors") for k, v in load_file(shard).items()}
    int4 = {k: v for shard in path.glob("*.safetensors") for k, v in load_file(shard).items()}
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(int4) and all((path / shard).is_file() for shard in index.values())
    linears = [name for name in floats if name.endswith(tuple(f"{linear}.weight" for linear in INT4_LINEARS))]
    assert len(linears) == 7 * config["num_hidden_layers"]
    for name, tensor in floats.items():
        if name not in linears:  # norms, embeddings, lm_head: as they were
            assert torch.equal(int4[name], tensor)
            continue
        stem = name.removesuffix(".weight")
        n, k = tensor.shape
        qweight, qzeros, scales = int4[f"{stem}.qweight"], int4[f"{stem}.qzeros"], int4[f"{stem}.scales"]
        assert (qweight.dtype, qweight.shape, scales.shape) == (torch.int32, (k // 8, n), (k // INT4_GROUP, n))
        assert torch.equal(int4[f"{stem}.g_idx"], torch.arange(k, dtype=torch.int32) // INT4_GROUP)
        codes = torch.stack([(qweight >> (4 * i)) & 15 for i in range(8)], dim=1).reshape(k, n)
        zeros = torch.stack([(qzeros >> (4 * i)) & 15 for i in range(8)], dim=2).reshape(k // INT4_GROUP, n)
        assert torch.all(zeros == 7)  # GPTQ stores zero point - 1: 8, symmetric
        step = scales.float().repeat_interleave(INT4_GROUP, dim=0)
        error = ((codes - 8) * step - tensor.float().t()).abs()
        slack = step.abs() * 2**-7  # the scales rounded to float16: up to 8 levels x 2**-11
        # Each block's value of largest magnitude is code 0; every other the nearest level, but for the
        # values across zero from it beyond the 7th level, which stay at the 7th (code 15).
        inside = codes < 15
        assert torch.all(error[inside] <= (step.abs() / 2 + slack)[inside]) and torch.all(error <= step.abs() + slack)
        assert torch.all((codes == 0).reshape(k // INT4_GROUP, INT4_GROUP, n).any(dim=1))


def test_onnxruntime_genai_builds_from_int4_where_its_float_build_does_not_fit(tmp_path):
    path = write_checkpoint("tiny-llava", tmp_path / "checkpoint")
    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    needed = float_build_bytes(path)
    assert needed == int(FLOAT_BUILD_BYTES_PER_PARAMETER * parameters)
    assert builder_input(path, tmp_path / "int4", needed) == (path, "float16")
    assert not (tmp_path / "int4").exists()
    source, kind = builder_input(path, tmp_path / "int4", needed - 1)
    assert source == tmp_path / "int4" and kind.startswith("int4")
    assert json.loads((source / "config.json").read_text())["quantization_config"] == INT4_CONFIG


def test_executorch_llama_says_when_export_llm_was_killed(tmp_path, monkeypatch):
    """The kernel's out-of-memory kill of `export_llm` (it needs ~24 GB at 7B) is named as such;
    nothing is at the anchor's folder and the staged copy of the checkpoint is gone (its log stays)."""
    path = write_checkpoint("tiny-llava", tmp_path / "checkpoint")
    killed = subprocess.CompletedProcess([], -signal.SIGKILL, stdout="")
    monkeypatch.setattr(executorch_llama.subprocess, "run", lambda *args, **kwargs: killed)
    with pytest.raises(RuntimeError, match="killed, most likely out of memory"):
        executorch_llama.build(path, tmp_path / "work")
    assert not (tmp_path / "work").exists()
    assert sorted(p.name for p in (tmp_path / "work.partial").iterdir()) == sorted([executorch_llama.EXPORT_LOG, executorch_llama.PARAMS])
