"""The model-family seam: registration, the manifest sections each family writes, vision FLOPs by hand."""

from __future__ import annotations

import pytest
from transformers import (
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from models import MODEL_SPECS, build_random_model, get_family, get_spec
from runtime.families import HOST_FAMILIES


def test_every_model_has_a_family_on_both_sides():
    families = {spec.family for spec in MODEL_SPECS.values()}
    assert families == {"llava", "llava_next", "qwen2_vl", "llava_video"}
    assert set(HOST_FAMILIES) == families
    assert get_family("llava").model_class is LlavaForConditionalGeneration
    assert get_family("llava_next").model_class is LlavaNextForConditionalGeneration
    assert get_family("qwen2_vl").model_class is Qwen2VLForConditionalGeneration
    assert get_family("llava_video").model_class is LlavaOnevisionForConditionalGeneration
    assert HOST_FAMILIES["llava_video"].input_kind == "video" and HOST_FAMILIES["llava"].input_kind == "image"
    with pytest.raises(ValueError, match="unknown model family 'blip'; families: llava, llava_next, llava_video, qwen2_vl"):
        get_family("blip")


@pytest.mark.parametrize(
    ("name", "pixel_values_shape", "rows"),
    [
        ("tiny-llava", [1, 3, 336, 336], 1),
        ("tiny-llava-next", [1, 5, 3, 112, 112], 1),
        ("llava-next-7b", [1, 5, 3, 336, 336], 1),
        ("tiny-qwen2-vl", [256, 1176], 3),
        ("qwen2-vl-7b", [2304, 1176], 3),
        ("tiny-llava-video", [1, 8, 3, 112, 112], 1),
        ("llava-video-7b", [1, 16, 3, 384, 384], 1),
    ],
)
def test_input_sections(name, pixel_values_shape, rows):
    spec = get_spec(name)
    family = spec.model_family
    sections = family.input_sections(spec, family.synthetic_processor(spec))
    assert sections["model"] == {"family": spec.family}
    assert sections["geometry"]["pixel_values_shape"] == pixel_values_shape
    assert sections["geometry"]["position_rows"] == rows
    assert sections["geometry"]["num_image_tokens"] == spec.num_image_tokens
    assert sections["text"]["image_token_id"] == spec.image_token_id
    assert sections["prompt_template"] == spec.prompt_template


def test_llava_vision_flops_by_hand():
    spec = get_spec("tiny-llava")
    vision = spec.model_family.vision_manifest(build_random_model(spec.name), spec)
    # CLIP width 32, MLP 64, 1 of 2 layers up to the feature layer (-2), 577 tokens with CLS.
    tokens = 577
    layer = 2 * tokens * 32 * 128 + 2 * 2 * tokens * tokens * 32 + 2 * 2 * tokens * 32 * 64
    expected = 2 * 576 * 3 * 14 * 14 * 32 + layer + 2 * 576 * 32 * 64 + 2 * 576 * 64 * 64
    assert vision == {"num_layers": 1, "hidden_size": 32, "intermediate_size": 64, "patch_size": 14, "flops": expected}


def test_llava_next_vision_flops_are_five_tiles():
    """The base tile and the 2 x 2 high-resolution tiles each cost one LLaVA-1.5-style CLIP pass."""
    spec = get_spec("tiny-llava-next")
    vision = spec.model_family.vision_manifest(build_random_model(spec.name), spec)
    tokens = 65  # 8 x 8 patches of a 112 px tile, and CLS
    layer = 2 * tokens * 32 * 128 + 2 * 2 * tokens * tokens * 32 + 2 * 2 * tokens * 32 * 64
    per_tile = 2 * 64 * 3 * 14 * 14 * 32 + layer + 2 * 64 * 32 * 64 + 2 * 64 * 64 * 64
    assert vision["flops"] == 5 * per_tile and vision["num_layers"] == 1


def test_qwen2_vl_vision_flops_by_hand():
    spec = get_spec("tiny-qwen2-vl")
    vision = spec.model_family.vision_manifest(build_random_model(spec.name), spec)
    # 256 patches of 1176 features, width 32, MLP 64, 2 blocks; merger: 64 tokens, 128 -> 128 -> 64.
    patches = 256
    block = 2 * patches * 32 * 128 + 2 * 2 * patches * patches * 32 + 2 * 2 * patches * 32 * 64
    expected = 2 * patches * 1176 * 32 + 2 * block + 2 * 64 * 128 * 128 + 2 * 64 * 128 * 64
    assert vision == {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64, "patch_size": 14, "flops": expected}


def test_llava_video_vision_flops_are_one_siglip_pass_per_frame():
    """Each of the 8 frames: SigLIP on 8 x 8 patches (no CLS), 2 layers, the projector before pooling."""
    spec = get_spec("tiny-llava-video")
    vision = spec.model_family.vision_manifest(build_random_model(spec.name), spec)
    patches = 64
    layer = 2 * patches * 32 * 128 + 2 * 2 * patches * patches * 32 + 2 * 2 * patches * 32 * 64
    per_frame = 2 * patches * 3 * 14 * 14 * 32 + 2 * layer + 2 * patches * 32 * 64 + 2 * patches * 64 * 64
    assert vision == {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64, "patch_size": 14, "flops": 8 * per_frame}
