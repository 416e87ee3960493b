"""Registry specs, real-size configs without download, random-weight builds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models import MODEL_SPECS, build_random_model, get_spec, load_for_export


def test_registered_names():
    assert set(MODEL_SPECS) == {
        "llava-1.5-7b",
        "llava-1.5-7b-3layers",
        "llava-1.5-13b",
        "tiny-llava",
        "llava-next-7b",
        "tiny-llava-next",
        "qwen2-vl-7b",
        "qwen2-vl-7b-3layers",
        "tiny-qwen2-vl",
        "llava-video-7b",
        "tiny-llava-video",
    }
    assert get_spec("llava-video-7b").hf_repo == "lmms-lab/LLaVA-Video-7B-Qwen2"
    assert get_spec("llava-1.5-7b").hf_repo == "llava-hf/llava-1.5-7b-hf"
    assert get_spec("qwen2-vl-7b").hf_repo == "Qwen/Qwen2-VL-7B-Instruct"
    assert get_spec("llava-1.5-13b").hf_repo == "llava-hf/llava-1.5-13b-hf"
    assert get_spec("llava-next-7b").hf_repo == "llava-hf/llava-v1.6-vicuna-7b-hf"
    assert get_spec("tiny-llava").hf_repo is None and get_spec("llava-1.5-7b-3layers").hf_repo is None


def test_default_quantization():
    quantizations = {name: spec.quantization for name, spec in MODEL_SPECS.items()}
    assert quantizations == {
        "llava-1.5-7b": "int4",
        "llava-1.5-13b": "int4",
        "llava-1.5-7b-3layers": "none",
        "tiny-llava": "none",
        "llava-next-7b": "int4",
        "tiny-llava-next": "none",
        "qwen2-vl-7b": "int4",
        "qwen2-vl-7b-3layers": "none",
        "tiny-qwen2-vl": "none",
        "llava-video-7b": "int4",
        "tiny-llava-video": "none",
    }


def test_unknown_model_name():
    expected = (
        r"unknown model 'llava-2-70b'; registered models: llava-1.5-13b, llava-1.5-7b, llava-1.5-7b-3layers, "
        r"llava-next-7b, llava-video-7b, qwen2-vl-7b, qwen2-vl-7b-3layers, tiny-llava, tiny-llava-next, "
        r"tiny-llava-video, tiny-qwen2-vl"
    )
    with pytest.raises(ValueError, match=expected):
        get_spec("llava-2-70b")


@pytest.mark.parametrize(
    ("name", "side"),
    [
        ("llava-1.5-7b", 24),
        ("llava-1.5-7b-3layers", 24),
        ("llava-1.5-13b", 24),
        ("tiny-llava", 24),
        ("qwen2-vl-7b", 24),  # 672 px: 48 x 48 patches of 14, merged 2 x 2
        ("qwen2-vl-7b-3layers", 16),  # 448 px
        ("tiny-qwen2-vl", 8),  # 224 px
    ],
)
def test_image_geometry_and_pruning_layer(name, side):
    spec = get_spec(name)
    assert spec.grid == (side, side)
    assert spec.num_image_tokens == side * side
    assert spec.prune_layer == 2


@pytest.mark.parametrize(
    ("name", "views", "tiles"), [("llava-next-7b", ((24, 24), (48, 49)), 4), ("tiny-llava-next", ((8, 8), (16, 17)), 4)]
)
def test_anyres_views(name, views, tiles):
    """LLaVA-NeXT: the base tile's view, then the tiles stitched with a newline column."""
    spec = get_spec(name)
    assert spec.views == spec.grid == views and spec.vision.tiles == tiles
    assert spec.num_image_tokens == sum(height * width for height, width in views)
    assert spec.hf_config().vision_config.image_size == spec.vision.tile


def test_anyres_image_size_must_be_a_square_pinpoint():
    vision = get_spec("llava-next-7b").vision
    with pytest.raises(ValueError, match=r"image size 1008 is not a square resolution of its grid pinpoints \[672\]"):
        dataclasses.replace(vision, image_size=1008)
    with pytest.raises(ValueError, match=r"llava-next-7b takes 672 x 672 images only"):
        get_spec("llava-next-7b").with_image_size(336)


def test_image_size_of_an_export():
    spec = get_spec("qwen2-vl-7b")
    assert spec.with_image_size(448).grid == (16, 16) and spec.with_image_size(672) is spec
    assert spec.with_image_size(448).keep_for_rate(0.889) == 28
    with pytest.raises(ValueError, match="image size must be a positive multiple of 28 for qwen2-vl-7b, got 500"):
        spec.with_image_size(500)
    with pytest.raises(ValueError, match=r"llava-1.5-7b takes 336 x 336 images only"):
        get_spec("llava-1.5-7b").with_image_size(448)


def test_qwen2_vl_7b_config_without_download():
    config = get_spec("qwen2-vl-7b").hf_config()
    vision, text = config.vision_config, config.text_config
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.mlp_ratio) == (32, 1280, 16, 4)
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert vision.hidden_size == text.hidden_size == 3584
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (28, 28, 4)
    assert (text.intermediate_size, text.vocab_size, text.max_position_embeddings) == (18944, 152064, 32768)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24] and text.rope_parameters["rope_theta"] == 1e6
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)


def test_keep_for_rate():
    spec = get_spec("llava-1.5-7b")
    assert [spec.keep_for_rate(r) for r in (0.0, 0.667, 0.778, 0.889)] == [576, 192, 128, 64]
    with pytest.raises(ValueError, match=r"pruning rate must be in \[0, 1\), got 1.0"):
        spec.keep_for_rate(1.0)


def test_llava_15_7b_config_without_download():
    config = get_spec("llava-1.5-7b").hf_config()
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1024, 24, 16)
    assert (vision.intermediate_size, vision.image_size, vision.patch_size) == (4096, 336, 14)
    assert vision.projection_dim == 768
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    assert config.projector_hidden_act == "gelu"
    assert (text.hidden_size, text.num_hidden_layers) == (4096, 32)
    assert (text.num_attention_heads, text.num_key_value_heads) == (32, 32)
    assert (text.intermediate_size, text.vocab_size, text.max_position_embeddings) == (11008, 32064, 4096)
    assert text.rms_norm_eps == 1e-5 and text.rope_parameters["rope_theta"] == 10000.0
    assert (config.image_token_id, config.pad_token_id) == (32000, 32001)


def test_llava_15_13b_config_without_download():
    text = get_spec("llava-1.5-13b").hf_config().text_config
    assert (text.hidden_size, text.num_hidden_layers) == (5120, 40)
    assert (text.num_attention_heads, text.intermediate_size) == (40, 13824)


def test_llava_15_7b_3layers_has_the_real_widths():
    full, short = get_spec("llava-1.5-7b").hf_config(), get_spec("llava-1.5-7b-3layers").hf_config()
    assert (short.text_config.num_hidden_layers, short.vision_config.num_hidden_layers) == (3, 2)
    for config, reference in ((short.text_config, full.text_config), (short.vision_config, full.vision_config)):
        widths = ("hidden_size", "intermediate_size", "num_attention_heads")
        assert [getattr(config, key) for key in widths] == [getattr(reference, key) for key in widths]
    assert short.text_config.vocab_size == 32064 and short.image_token_id == 32000


def test_another_text_depth_keeps_the_widths():
    full = get_spec("llava-1.5-7b")
    deep = full.with_text_layers(16)
    assert (deep.name, deep.hf_repo, deep.text.num_hidden_layers) == ("llava-1.5-7b-16layers", None, 16)
    assert dataclasses.replace(deep.text, num_hidden_layers=32) == full.text and deep.vision == full.vision
    assert full.with_text_layers(32) is full
    model = build_random_model(deep)  # a spec, not a registered name
    assert len(model.model.language_model.layers) == 16
    with pytest.raises(ValueError, match=r"prune_layer must be in \[1, 1\], got 2"):
        full.with_text_layers(2)
    with pytest.raises(ValueError, match="another depth takes random weights"):
        load_for_export("llava-1.5-7b", text_layers=16)


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("llava-1.5-7b", 7.063),
        ("llava-1.5-13b", 13.351),
        ("llava-1.5-7b-3layers", 0.917),
        ("qwen2-vl-7b", 8.291),  # Qwen2-VL-7B-Instruct's published 8,291,375,616
        ("qwen2-vl-7b-3layers", 1.875),
    ],
)
def test_real_size_model_on_meta_device(name, billions):
    model = build_random_model(name, dtype=torch.float16)
    parameters = list(model.parameters())
    assert all(p.device.type == "meta" and p.dtype == torch.float16 for p in parameters)
    assert sum(p.numel() for p in parameters) / 1e9 == pytest.approx(billions, abs=1e-3)


def test_materialized_random_weights_are_seeded():
    first = build_random_model("tiny-llava", materialize=True, seed=0).state_dict()
    again = build_random_model("tiny-llava", materialize=True, seed=0).state_dict()
    other = build_random_model("tiny-llava", materialize=True, seed=1).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])
    assert all(torch.isfinite(v).all() for v in first.values() if v.is_floating_point())
    # Buffers that `to_empty` leaves uninitialised are recomputed.
    head_dim = 16
    expected = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    model = build_random_model("tiny-llava", materialize=True)
    torch.testing.assert_close(model.model.language_model.rotary_emb.inv_freq, expected)
    assert torch.equal(model.model.vision_tower.embeddings.position_ids[0], torch.arange(577))


def test_invalid_spec_is_rejected():
    spec = get_spec("tiny-llava")
    with pytest.raises(ValueError, match=r"prune_layer must be in \[1, 3\], got 4"):
        dataclasses.replace(spec, prune_layer=4)
