"""Offline checkpoint resolution and loading: where it looks, and what it says when nothing is there."""

from __future__ import annotations

import json

import pytest
import torch

from models import get_spec, load_for_export, load_model, resolve_checkpoint
from runtime.eager import EagerModel
from models.checkpoints import check_config
from models.quantize import Quantization, quantized_weights
from tests.quantization import model_quantization


@pytest.fixture(autouse=True)
def no_model_path(monkeypatch):
    monkeypatch.delenv("MODEL_PATH", raising=False)


def test_missing_weights_in_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"llava-1.5-7b: no weights of llava-hf/llava-1.5-7b-hf found") as error:
        load_model("llava-1.5-7b", cache_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message  # where it looked
    assert "hf download llava-hf/llava-1.5-7b-hf" in message and "MODEL_PATH=" in message  # how to get them


def test_missing_weights_at_model_path(tmp_path):
    missing = tmp_path / "llava-13b"
    with pytest.raises(FileNotFoundError, match=rf"llava-1.5-13b: model_path={missing} holds no checkpoint"):
        load_model("llava-1.5-13b", missing)


def test_missing_weights_at_env_model_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"MODEL_PATH={tmp_path} holds no checkpoint.*--local-dir {tmp_path}"):
        resolve_checkpoint("llava-1.5-7b")


def test_model_path_argument_wins_over_environment(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_PATH", str(tiny_dir))
    assert resolve_checkpoint("llava-1.5-7b") == tiny_dir
    with pytest.raises(FileNotFoundError, match=rf"model_path={tmp_path} holds no checkpoint"):
        resolve_checkpoint("llava-1.5-7b", tmp_path)


def test_hugging_face_cache_snapshot_is_found(tmp_path):
    snapshot = tmp_path / "models--llava-hf--llava-1.5-7b-hf" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({}))
    (tmp_path / "models--llava-hf--llava-1.5-7b-hf" / "refs").mkdir()
    (tmp_path / "models--llava-hf--llava-1.5-7b-hf" / "refs" / "main").write_text("0" * 40)
    with pytest.raises(FileNotFoundError, match="no complete snapshot"):  # config but no weights
        resolve_checkpoint("llava-1.5-7b", cache_dir=tmp_path)
    (snapshot / "model-00001-of-00003.safetensors").write_bytes(b"")
    assert resolve_checkpoint("llava-1.5-7b", cache_dir=tmp_path) == snapshot


def test_random_weights_only_model_has_no_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="llava-1.5-7b-3layers has no checkpoint anywhere.*random weights only"):
        resolve_checkpoint("llava-1.5-7b-3layers", tmp_path)


def test_checkpoint_contradicting_the_spec_is_rejected(tiny_dir):
    # tiny-llava's files are not a LLaVA-1.5-7B checkpoint.
    expected = r"does not match the llava-1.5-7b spec: image token id: checkpoint 3, spec 32000"
    with pytest.raises(ValueError, match=expected):
        load_model("llava-1.5-7b", tiny_dir)


def test_check_config_names_every_mismatch():
    spec = get_spec("llava-1.5-7b")
    config = spec.hf_config()
    config.vision_config.patch_size = 16
    config.text_config.num_hidden_layers = 30
    with pytest.raises(ValueError, match=r"patch size: checkpoint 16, spec 14; text layers: checkpoint 30, spec 32"):
        check_config(spec, config)


def test_unknown_model_name_everywhere():
    for load in (load_model, resolve_checkpoint, EagerModel.from_registry):
        with pytest.raises(ValueError, match=r"unknown model 'llava-1.6'"):
            load("llava-1.6")


def test_tiny_llava_loads_like_a_checkpoint(tiny_dir):
    loaded = load_model("tiny-llava", tiny_dir)
    assert loaded.spec.name == "tiny-llava"
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    assert loaded.processor.image_token == "<image>"


def test_load_for_export_random_weights_quantized():
    loaded = load_for_export("tiny-llava", quantization=Quantization.INT4, seed=0)
    assert loaded.checkpoint is None and loaded.spec.name == "tiny-llava"
    assert model_quantization(loaded.model) is Quantization.INT4
    assert len(list(quantized_weights(loaded.model))) == 4 * 7 + 1
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.model.vision_tower.embeddings.patch_embedding.weight.dtype == torch.float32
    assert len(loaded.processor.tokenizer) == 320 and loaded.processor.image_token == "<image>"
    assert loaded.model.generation_config.eos_token_id == 2
    again = load_for_export("tiny-llava", quantization=Quantization.INT4, seed=0)
    first, second = loaded.model.lm_head.weight, again.model.lm_head.weight
    assert torch.equal(first.qdata, second.qdata) and torch.equal(first.scale, second.scale)


def test_load_for_export_from_a_checkpoint(tiny_dir, tiny):
    loaded = load_for_export("tiny-llava", quantization=Quantization.INT8, model_path=tiny_dir)
    assert loaded.checkpoint == tiny_dir
    assert model_quantization(loaded.model) is Quantization.INT8
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    # Quantized on its way through float16 (what LLaVA checkpoints hold): close to the float32 weights.
    torch.testing.assert_close(
        loaded.model.lm_head.weight.dequantize(), tiny.model.lm_head.weight, atol=0.05, rtol=0
    )
    unquantized = load_for_export("tiny-llava", model_path=tiny_dir).model.state_dict()
    assert all(torch.equal(value, unquantized[key]) for key, value in tiny.model.state_dict().items())
