"""ExecuTorch's own multimodal LLM runner (`executorch.extension.llm.runner.MultimodalRunner`, the
C++ runner behind its Android and iOS apps) runs a .pte whose language model is unpruned unchanged
and answers as this project's runtime does: the unpruned artifact, and a DivPrune one, whose vision
encoder method returns the R kept tokens' embeddings (the runner prefills them as the image segment).

The runner hands its callback decoded strings, never token ids, and fails on a piece that is not
whole UTF-8, which a random tiny model emits often (byte-level tokens). So the test model is
tiny-llava with the LM head rows of such tokens zeroed: its greedy tokens are whole characters.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from export.config import Backend, ExportConfig
from export.pipeline import ExportPipeline
from runtime.artifact import load_artifact
from runtime.backends import open_session
from runtime.contract import PTE_PATH, TOKENIZER_FILE
from runtime.generate import GenerationConfig, InputProcessor, greedy

N = 576
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def whole_character_checkpoint(tiny_dir, tmp_path_factory):
    """tiny-llava whose LM head only picks tokens that decode to whole characters."""
    folder = tmp_path_factory.mktemp("whole-characters") / "tiny-llava"
    shutil.copytree(tiny_dir, folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    partial = [i for i in range(tokenizer.get_vocab_size()) if "\ufffd" in tokenizer.decode([i])]
    weights = load_file(folder / "model.safetensors")
    lm_head = next(name for name in weights if name.endswith("lm_head.weight"))
    weights[lm_head][partial] = 0.0  # logit 0, below the largest of the other random logits
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize(("method", "keep"), [("vlm-pruner", N), ("divprune", 64)])
def test_multimodal_runner_answers_as_the_runtime(whole_character_checkpoint, method, keep):
    from executorch.extension.llm.runner import GenerationConfig as RunnerConfig
    from executorch.extension.llm.runner import MultimodalRunner
    from transformers.feature_extraction_utils import BatchFeature

    config = ExportConfig(
        model="tiny-llava",
        method=method,
        keep=keep,
        model_path=whole_character_checkpoint,
        output_dir=whole_character_checkpoint.parent / "artifacts",
        backends=[Backend.EXECUTORCH],
    )
    artifact = load_artifact(ExportPipeline(config).run())
    inputs = InputProcessor.from_artifact(artifact)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    prompt = inputs(image, "What is in the image?")
    ours = greedy(open_session(artifact, "executorch"), prompt, GenerationConfig(max_new_tokens=NEW_TOKENS), artifact.text.eos_token_ids)
    assert len(ours.token_ids) > 1

    runner = MultimodalRunner(str(artifact.path(PTE_PATH)), str(artifact.path(TOKENIZER_FILE)))
    pieces: list[str] = []
    hf_inputs = BatchFeature(
        # The runner reads a 3-D image as (C, H, W).
        {"input_ids": torch.from_numpy(prompt.input_ids), "pixel_values": torch.from_numpy(prompt.pixel_values[0].copy())}
    )
    runner.generate_hf(
        hf_inputs,
        RunnerConfig(max_new_tokens=NEW_TOKENS, temperature=0.0, echo=False),
        image_token_id=artifact.text.image_token_id,
        token_callback=pieces.append,
    )
    tokenizer = Tokenizer.from_file(str(artifact.path(TOKENIZER_FILE)))
    assert pieces == [tokenizer.decode([token], skip_special_tokens=False) for token in ours.token_ids]
