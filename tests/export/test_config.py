"""ExportConfig: validation of user input, resolution of keep, rate and sequence length."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.config import DEFAULT_MAX_SEQ_LEN, Backend, ExportConfig
from models.quantize import Quantization


def test_defaults():
    config = ExportConfig()
    assert config.model == "tiny-llava"
    assert config.keep_count == 64  # the default rate 0.889 of 576 tokens
    assert config.backends == (Backend.ONNX, Backend.EXECUTORCH)
    assert config.seq_len_limit == DEFAULT_MAX_SEQ_LEN
    assert config.artifact_dir == Path("artifacts/tiny-llava/keep64")
    assert config.quantization is Quantization.NONE
    assert not config.random_weights and config.seed == 0


@pytest.mark.parametrize(("rate", "keep"), [(0.0, 576), (0.667, 192), (0.778, 128), (0.889, 64)])
def test_rate_gives_the_papers_keep_counts(rate, keep):
    assert ExportConfig(rate=rate).keep_count == keep


def test_keep_given_directly():
    config = ExportConfig(keep=576, output_dir="out")
    assert config.keep_count == 576 and config.pruning_rate == 0.0
    assert config.artifact_dir == Path("out/tiny-llava/keep576")


@pytest.mark.parametrize(
    ("model", "quantization"),
    [
        ("tiny-llava", Quantization.NONE),
        ("llava-1.5-7b-3layers", Quantization.NONE),
        ("llava-1.5-7b", Quantization.INT4),
    ],
)
def test_quantization_defaults_to_the_models(model, quantization):
    config = ExportConfig(model=model)
    assert config.quantization is quantization
    assert config.artifact_dir == Path(f"artifacts/{model}/keep64")


@pytest.mark.parametrize(
    ("model", "quantization", "folder"),
    [
        ("tiny-llava", "int4", "keep64-int4"),
        ("tiny-llava", Quantization.INT8, "keep64-int8"),
        ("tiny-llava", "none", "keep64"),
        ("llava-1.5-7b", "int4", "keep64"),
        ("llava-1.5-7b", "none", "keep64-none"),
    ],
)
def test_quantization_other_than_the_models_names_the_folder(model, quantization, folder):
    config = ExportConfig(model=model, quantization=quantization, output_dir="out")
    assert config.quantization is Quantization(quantization)
    assert config.artifact_dir == Path("out") / model / folder


def test_the_fast_onnx_profile_names_the_folder():
    config = ExportConfig(model="llava-1.5-7b", onnx_profile="fast", output_dir="out")
    assert config.onnx_profile == "fast" and config.artifact_dir == Path("out/llava-1.5-7b/keep64-fast")
    assert ExportConfig(model="llava-1.5-7b").onnx_profile == "exact"


def test_an_int8_vision_tower_names_the_folder_and_defaults_to_executorch():
    config = ExportConfig(model="llava-1.5-7b", vision_quantization="int8", output_dir="out")
    assert config.vision_quantization is Quantization.INT8 and config.backends == (Backend.EXECUTORCH,)
    assert config.artifact_dir == Path("out/llava-1.5-7b/keep64-vision-int8")
    assert ExportConfig(model="llava-1.5-7b").vision_quantization is Quantization.NONE


def test_random_weights():
    config = ExportConfig(model="llava-1.5-7b-3layers", random_weights=True, seed=3)
    assert config.random_weights and config.seed == 3 and config.model_path is None


def test_backends_from_strings():
    assert ExportConfig(backends=("executorch",)).backends == (Backend.EXECUTORCH,)
    assert ExportConfig(backends="onnx").backends == (Backend.ONNX,)


def test_default_max_seq_len_leaves_room_for_the_text():
    """2048 unless N + 1024 needs more (LLaVA-NeXT's 2928 image tokens: 4096, Llama's limit)."""
    assert ExportConfig(model="llava-1.5-7b").seq_len_limit == 2048
    assert ExportConfig(model="tiny-llava-next").seq_len_limit == 2048
    assert ExportConfig(model="llava-next-7b").seq_len_limit == 4096


def test_image_size_sets_the_geometry_and_the_folder():
    config = ExportConfig(model="tiny-qwen2-vl", image_size=448, keep=64)
    assert config.spec.grid == (16, 16) and config.spec.num_image_tokens == 256
    assert config.artifact_dir == Path("artifacts/tiny-qwen2-vl/keep64-448px")
    assert ExportConfig(model="tiny-qwen2-vl", image_size=224, keep=64).artifact_dir.name == "keep64"
    assert ExportConfig(model="tiny-qwen2-vl", rate=0.5, image_size=448).keep_count == 128


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"model": "llava-9b"},
            "unknown model 'llava-9b'; registered models: "
            "llava-1.5-13b, llava-1.5-7b, llava-1.5-7b-3layers, llava-next-7b, llava-video-7b, qwen2-vl-7b, "
            "qwen2-vl-7b-3layers, tiny-llava, tiny-llava-next, tiny-llava-video, tiny-qwen2-vl",
        ),
        ({"keep": 64, "rate": 0.5}, r"give keep or rate, not both \(keep=64, rate=0.5\)"),
        ({"keep": 0}, r"keep must be an integer in \[1, N\] = \[1, 576\]"),
        ({"keep": 577}, r"keep must be an integer in \[1, N\] = \[1, 576\]"),
        ({"keep": 64.0}, "keep must be an integer"),
        ({"keep": True}, "keep must be an integer"),
        ({"rate": 1.0}, r"rate must be a number in \[0, 1\)"),
        ({"rate": -0.1}, r"rate must be a number in \[0, 1\)"),
        ({"rate": float("nan")}, r"rate must be a number in \[0, 1\)"),
        ({"backends": ()}, "at least one backend"),
        ({"backends": ("onnx", "tflite")}, "unknown backend .* choose from onnx, executorch"),
        ({"backends": ("onnx", "onnx")}, "backends repeated"),
        ({"max_seq_len": 600}, r"max_seq_len must be in \[640, 4096\]"),
        ({"max_seq_len": 8192}, r"max_seq_len must be in \[640, 4096\]"),
        ({"quantization": "int2"}, "unknown quantization 'int2'; choose from none, int4, int8"),
        ({"quantization": 4}, "unknown quantization 4; choose from none, int4, int8"),
        ({"random_weights": True, "model_path": "ckpt"}, r"give a checkpoint \(model_path\) or random weights"),
        ({"model": "tiny-qwen2-vl", "keep": 65}, r"keep must be an integer in \[1, N\] = \[1, 64\] for tiny-qwen2-vl"),
        ({"model": "tiny-qwen2-vl", "image_size": 250}, "image size must be a positive multiple of 28"),
        ({"model": "tiny-qwen2-vl", "image_size": 0}, "image size must be a positive multiple of 28"),
        ({"model": "tiny-llava", "image_size": 448}, r"tiny-llava takes 336 x 336 images only"),
        ({"onnx_profile": "turbo"}, "unknown ONNX profile 'turbo'; choose from exact, fast"),
        ({"onnx_profile": "fast"}, r"needs quantized weights \(--quantize int4 or int8\) and the onnx backend"),
        ({"onnx_profile": "fast", "quantization": "int4", "backends": "executorch"}, "and the onnx backend"),
        ({"vision_quantization": "int4", "backends": "executorch"}, "unknown vision quantization 'int4'; choose from none, int8"),
        ({"vision_quantization": "fp8", "backends": "executorch"}, "unknown vision quantization 'fp8'; choose from none, int8"),
        (
            {"vision_quantization": "int8", "backends": ("onnx", "executorch")},
            "vision tower is ExecuTorch's .*: export it with the executorch backend alone",
        ),
    ],
)
def test_invalid_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExportConfig(**kwargs)
