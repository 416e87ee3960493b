"""The anchors' input: a Hugging Face checkpoint of a registered VLM's language model, random weights.

    write_checkpoint("llava-1.5-7b", out_dir, layers=None)   LLaVA-1.5-7B's Llama decoder, all 32 layers

A `LlamaForCausalLM` (or the family's text class) with the registry's hyperparameters and
transformers' initialisation seeded per block (`models.materialize.fill_random`; speed does not
depend on the values), stored in float16 (what real checkpoints hold) one safetensors shard per block, so that a 7B checkpoint is
written in about one block's memory. The synthetic tokenizer of the real vocabulary size goes with
it (`models.synthetic_processor`): the anchors' converters want one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from models.materialize import fill_random, weight_blocks
from models.registry import get_spec
from models.synthetic_processor import build_tokenizer

DTYPE = torch.float16
INDEX = "model.safetensors.index.json"


def write_checkpoint(model_name: str, out_dir: Path, *, layers: int | None = None, seed: int = 0) -> Path:
    """Write the checkpoint to `out_dir` (replaced if there) and return it.

    Args:
        model_name: registry name whose language model to write, e.g. "llava-1.5-7b".
        layers: decoder layers (default: the model's own); fewer keep the real width.
        seed: seed of the random weights.
    Raises:
        ValueError: layers out of range.
    """
    spec = get_spec(model_name)
    text = spec.text if layers is None else replace(spec.text, num_hidden_layers=layers)
    if not 1 <= text.num_hidden_layers <= spec.text.num_hidden_layers:
        raise ValueError(f"layers must be in 1..{spec.text.num_hidden_layers}, got {layers}")
    config = type(spec.hf_config().text_config)(**text.config_fields(), torch_dtype="float16")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fill, weight_map = fill_random(seed), {}
    for name, block, recurse in weight_blocks(model):
        fill(model, name, block, recurse)
        shard = f"{name or 'model'}.safetensors"
        tensors = {
            f"{name}.{key}" if name else key: tensor.to(DTYPE).contiguous()
            for key, tensor in block.state_dict(keep_vars=False).items()
            if recurse or "." not in key
        }
        if tensors:  # not a block of non-persistent buffers only (rotary frequencies)
            save_file(tensors, staging / shard, metadata={"format": "pt"})
            weight_map |= dict.fromkeys(tensors, shard)
        block.to_empty(device="meta", recurse=recurse)
    (staging / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    config.architectures = [type(model).__name__]
    config.save_pretrained(staging)
    build_tokenizer(spec).save_pretrained(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir
