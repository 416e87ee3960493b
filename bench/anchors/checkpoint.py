"""The anchors' input: a Hugging Face checkpoint of a registered VLM's language model, random weights.

    write_checkpoint("llava-1.5-7b", out_dir, layers=None)   LLaVA-1.5-7B's Llama decoder, all 32 layers

A `LlamaForCausalLM` (or the family's text class) with the registry's hyperparameters and
transformers' initialisation seeded per block (`models.materialize.fill_random`; speed does not
depend on the values), stored in float16 (what real checkpoints hold) one safetensors shard per block, so that a 7B checkpoint is
written in about one block's memory. The synthetic tokenizer of the real vocabulary size goes with
it (`models.synthetic_processor`): the anchors' converters want one.

    write_int4_checkpoint(checkpoint, out_dir)   the same with its decoder linears in int4 (GPTQ's format)

for a builder that cannot quantize the float16 one in this machine's memory (`bench.anchors.onnxruntime_genai`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
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


# The int4 checkpoint: GPTQ's storage format, the weights rounded to the nearest of 16 levels per block
# (RTN) as ONNX Runtime's default int4 quantizer does (MLAS, symmetric): scale = the block's value of
# largest magnitude / -8, codes round(w / scale) + 8 in 0..15, zero point 8.
INT4_GROUP = 32
INT4_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INT4_CONFIG = {"quant_method": "gptq", "bits": 4, "group_size": INT4_GROUP, "desc_act": False, "sym": True}


def write_int4_checkpoint(source: Path, out_dir: Path) -> Path:
    """Write `source` (a float16 checkpoint of `write_checkpoint`) to `out_dir` (replaced if there)
    with every decoder linear in int4, GPTQ's tensors and config; the rest as it is. Shard by shard,
    in about one shard's memory."""
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    weight_map = {}
    for shard in sorted(source.glob("*.safetensors")):
        tensors = {}
        for name, tensor in load_file(shard).items():
            stem, _, kind = name.rpartition(".")
            if kind == "weight" and stem.rpartition(".")[2] in INT4_LINEARS:
                tensors |= {f"{stem}.{key}": value for key, value in int4_rtn(tensor).items()}
            else:
                tensors[name] = tensor
        save_file(tensors, staging / shard.name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, shard.name)
    for path in source.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != INDEX:
            shutil.copy(path, staging / path.name)
    (staging / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    config = json.loads((staging / "config.json").read_text())
    (staging / "config.json").write_text(json.dumps(config | {"quantization_config": INT4_CONFIG}, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def int4_rtn(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A linear's weight [N, K] in GPTQ's int4 tensors, G = K / `INT4_GROUP`: qweight int32 [K/8, N],
    qzeros int32 [G, N/8] (GPTQ stores zero point - 1), scales float16 [G, N], g_idx int32 [K]."""
    n, k = weight.shape
    blocks = weight.float().t().reshape(k // INT4_GROUP, INT4_GROUP, n)
    scales = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True)) / -8  # [G, 1, N], signed
    ratios = torch.where(scales == 0, 0.0, blocks / scales)
    codes = (torch.round(ratios) + 8).clamp(0, 15).reshape(k, n)
    zeros = torch.full((n, k // INT4_GROUP), 8 - 1)
    return {
        "qweight": _pack_int4(codes),
        "qzeros": _pack_int4(zeros).t().contiguous(),
        "scales": scales[:, 0].to(DTYPE),
        "g_idx": torch.arange(k, dtype=torch.int32) // INT4_GROUP,
    }


def _pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int32 [R/8, C] of 4-bit values [R, C]: 8 consecutive rows in each int32, the first in the lowest bits."""
    rows = values.to(torch.int64).reshape(values.shape[0] // 8, 8, values.shape[1])
    packed = sum(rows[:, i] << (4 * i) for i in range(8))
    return (packed - (packed >= 2**31) * 2**32).to(torch.int32)  # the same 32 bits, read as signed
