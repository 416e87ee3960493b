"""The tiny-llava checkpoint: offline build, idempotence, processor and tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from models import build_tiny_llava, get_spec


def test_build_is_idempotent(tiny_dir):
    weights = tiny_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_llava(tiny_dir) == tiny_dir
    assert weights.stat().st_mtime_ns == before


def test_build_is_deterministic(tiny_dir, tmp_path):
    other = build_tiny_llava(tmp_path / "again")
    first = LlavaForConditionalGeneration.from_pretrained(tiny_dir).state_dict()
    second = LlavaForConditionalGeneration.from_pretrained(other).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tiny_dir / "tokenizer.json").read_text() == (other / "tokenizer.json").read_text()


def test_stale_build_is_replaced(tmp_path):
    target = build_tiny_llava(tmp_path / "tiny")
    (target / "tiny_llava_recipe.json").write_text('{"recipe_sha256": "old"}')
    (target / "leftover.txt").write_text("from the old recipe")
    assert build_tiny_llava(target) == target
    assert not (target / "leftover.txt").exists()
    assert (target / "model.safetensors").is_file()


def test_foreign_directory_is_not_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a tiny-llava build"):
        build_tiny_llava(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_processor_expands_the_image_and_applies_the_template(tiny, image, prompt):
    spec = get_spec("tiny-llava")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = tiny.processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert text == spec.format_prompt(prompt) == f"USER: <image>\n{prompt} ASSISTANT:"

    processed = tiny.processor(images=image, text=text, return_tensors="pt")
    input_ids = processed["input_ids"][0]
    assert processed["pixel_values"].shape == (1, 3, 336, 336)
    assert input_ids[0] == tiny.processor.tokenizer.bos_token_id == 1
    assert int((input_ids == spec.image_token_id).sum()) == 576
    decoded = tiny.processor.decode(input_ids, skip_special_tokens=True)
    assert decoded == f"USER: \n{prompt} ASSISTANT:"


def test_tokenizer_matches_the_spec(tiny):
    tokenizer, spec = tiny.processor.tokenizer, get_spec("tiny-llava")
    assert len(tokenizer) == spec.text.vocab_size == tiny.model.config.text_config.vocab_size
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<image>", "<pad>"]) == [0, 1, 2, 3, 4]
    assert tiny.model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    assert tokenizer.decode(tokenizer("a café, 3 dogs")["input_ids"], skip_special_tokens=True) == "a café, 3 dogs"
