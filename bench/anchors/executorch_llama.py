"""Anchor: ExecuTorch's own LLM export path for Llama (`export_llm`) and its Python Llama runner.

    build   the Hugging Face checkpoint in Meta's format (`consolidated.pth`, `params.json`), then
            `python -m executorch.extension.llm.export.export_llm` as ExecuTorch documents it for
            XNNPACK: 8da4w linears in groups of 32 (plain affine scales: ExecuTorch's default HQQ search
            makes the same format, as fast to run, but takes 22 s per 4096 x 11008 matrix here; token embeddings stay
            fp32, as in ours), KV cache, the custom SDPA-with-KV-cache op, XNNPACK (extended ops),
            fp32; 1024 positions (the prompt's one forward and the KV cache).
    measure `NativeLlamaRunner` (`executorch.examples.models.llama.runner.native`): its `forward`
            driven as its `generate` drives it, greedily, without the stop at end of sequence.

The wheel has no Llama HF-to-Meta converter (its per-model ones need torchtune, which is not
installed), so `meta_state_dict` maps the keys as `examples/models/qwen2_5/convert_weights.py` does
and undoes HF's rotary permutation of q/k: the Meta-layout model with Meta's RoPE computes what the
HF model does. ExecuTorch's C++ runner (`executorch.extension.llm.runner.TextLLMRunner`) is not
used: its binding takes a text prompt, not token ids (the 590 ids' text re-encodes to 596 tokens),
has no `ignore_eos` in its `GenerationConfig`, and prints every token on stdout.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.anchors.timing import RECORD, Generate, anchor_main, text_stats
from runtime.generate import Stats, ms_since

logger = logging.getLogger(__name__)

MAX_LENGTH = 1024  # positions: a prompt of up to MAX_LENGTH - 1 tokens in one forward, and the KV cache
GROUP_SIZE = 32
PTE = "llama.pte"
PARAMS = "params.json"
CHECKPOINT = "consolidated.pth"
EXPORT_LOG = "export.log"  # export_llm's output, in the staging folder whatever the outcome
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # NativeLlamaRunner loads a tokenizer
OUTPUT_TAIL = 4000
EXPORT_PEAK_GB_AT_7B = 24.2  # export_llm's peak resident memory at LLaVA-1.5-7B's 32 layers (README)
# Llama2Model treats a checkpoint path containing these as pre-quantized (examples/models/llama/model.py).
PREQUANTIZED_MARKERS = ("int8", "8da4w")

# Meta's names of HF's Llama weights (examples/models/qwen2_5/convert_weights.py, without biases).
META_FROM_HF = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
}


def unpermute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo HF's q/k permutation (halves per head) back to Meta's interleaved rotary pairs."""
    rows, cols = weight.shape
    return weight.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_state_dict(checkpoint: Path, config: dict) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under Meta's names and dtype (safetensors maps the shards; only q and k are copied)."""
    from executorch.examples.models.checkpoint import get_mapped_key

    shards = sorted(set(json.loads((checkpoint / "model.safetensors.index.json").read_text())["weight_map"].values()))
    heads = {"wq": config["num_attention_heads"], "wk": config["num_key_value_heads"]}
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        for key, tensor in load_file(checkpoint / shard).items():
            name = get_mapped_key(key, META_FROM_HF)
            projection = name.split(".")[-2]
            state[name] = unpermute_rotary(tensor, heads[projection]) if projection in heads else tensor
    return state


def meta_params(config: dict) -> dict:
    """`params.json` of Meta's Llama format (`examples/models/llama/model_args.py`) for the HF config."""
    return {
        "dim": config["hidden_size"],
        "n_layers": config["num_hidden_layers"],
        "n_heads": config["num_attention_heads"],
        "n_kv_heads": config["num_key_value_heads"],
        "hidden_dim": config["intermediate_size"],
        "vocab_size": config["vocab_size"],
        "norm_eps": config["rms_norm_eps"],
        "rope_theta": config["rope_parameters"]["rope_theta"],
    }


def export_command(checkpoint: Path, params: Path, out_dir: Path, config: dict) -> list[str]:
    """`export_llm`'s command line (Hydra overrides of `LlmConfig`) for the XNNPACK 8da4w .pte."""
    metadata = json.dumps({"get_bos_id": config["bos_token_id"], "get_eos_ids": [config["eos_token_id"]]})
    return [
        sys.executable, "-m", "executorch.extension.llm.export.export_llm",
        "base.model_class=llama2",
        f"base.checkpoint={checkpoint}",
        f"base.params={params}",
        f"base.metadata='{metadata}'",
        "model.use_kv_cache=True",
        "model.use_sdpa_with_kv_cache=True",
        "model.dtype_override=fp32",
        "quantization.qmode=8da4w",
        f"quantization.group_size={GROUP_SIZE}",
        "quantization.use_hqq=False",
        "backend.xnnpack.enabled=True",
        "backend.xnnpack.extended_ops=True",
        f"export.max_seq_length={MAX_LENGTH}",
        f"export.max_context_length={MAX_LENGTH}",
        f"export.output_dir={out_dir}",
        f"export.output_name={PTE}",
        f"hydra.run.dir={out_dir / 'hydra'}",
    ]


def build(checkpoint: Path, work: Path) -> None:
    """`work`/llama.pte from the checkpoint in Meta's format with `export_llm`, and `work`/anchor.json.

    Raises:
        ValueError: the staging path would make ExecuTorch take the checkpoint for a pre-quantized one.
        RuntimeError: the export failed (the tail of its output is in the message).
    """
    staging = work.with_name(work.name + ".partial").resolve()
    if any(marker in str(staging) for marker in PREQUANTIZED_MARKERS):
        raise ValueError(f"{staging} contains one of {PREQUANTIZED_MARKERS}: ExecuTorch would read it as pre-quantized")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = json.loads((checkpoint / "config.json").read_text())

    tick = time.perf_counter()
    state = meta_state_dict(checkpoint, config)
    torch.save(state, staging / CHECKPOINT)
    del state
    (staging / PARAMS).write_text(json.dumps(meta_params(config), indent=1))
    logger.info("Meta checkpoint written in %.1f s", ms_since(tick) / 1000)

    command = export_command(staging / CHECKPOINT, staging / PARAMS, staging, config)
    logger.info("exporting: %s", " ".join(command))
    tick = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=staging, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        (staging / CHECKPOINT).unlink()  # the float16 copy, 13.5 GB at 7B: not left behind, whatever happened
    (staging / EXPORT_LOG).write_text(done.stdout)
    if done.returncode == -signal.SIGKILL:
        raise RuntimeError(
            f"export_llm was killed, most likely out of memory: it holds the model in float32 while it lowers "
            f"(measured: {EXPORT_PEAK_GB_AT_7B} GB resident for LLaVA-1.5-7B's decoder); add swap or use fewer layers"
        )
    if done.returncode != 0 or not (staging / PTE).exists():
        raise RuntimeError(f"export_llm failed (exit {done.returncode}):\n{done.stdout[-OUTPUT_TAIL:]}")
    logger.info("exported %s (%.0f MiB) in %.1f s", PTE, (staging / PTE).stat().st_size / 2**20,
                ms_since(tick) / 1000)

    for name in TOKENIZER_FILES:
        shutil.copy2(checkpoint / name, staging / name)
    record = {
        "executorch": importlib.metadata.version("executorch"),
        "torchao": importlib.metadata.version("torchao"),
        "convert": "HF safetensors to Meta's consolidated.pth and params.json (key map, q/k rotary un-permuted)",
        "export": " ".join(export_command(Path("CHECKPOINT"), Path("PARAMS"), Path("WORK"), config)[1:]),
        "pte_mib": round((staging / PTE).stat().st_size / 2**20),
    }
    (staging / RECORD).write_text(json.dumps(record, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    staging.rename(work)


def load(work: Path, threads: int | None) -> Generate:
    """ExecuTorch's `NativeLlamaRunner` on the .pte; `threads` sizes ExecuTorch's threadpool (default: its own)."""
    from executorch.examples.models.llama.runner.generation import next_token
    from executorch.examples.models.llama.runner.native import NativeLlamaRunner, build_args_parser
    from executorch.extension.pybindings import portable_lib

    if threads is not None:
        portable_lib._unsafe_reset_threadpool(threads)
    logger.info("ExecuTorch threadpool: %d threads", portable_lib._threadpool_get_thread_count())
    args = build_args_parser().parse_args([
        "--pte", str(work / PTE), "--params", str(work / PARAMS), "--kv_cache", "--max_len", str(MAX_LENGTH),
        "--tokenizer", str(work / TOKENIZER_FILES[0]), "--tokenizer_config", str(work / TOKENIZER_FILES[1]),
    ])
    runner = NativeLlamaRunner(args)

    def step(tokens: list[int], position: int) -> int:
        """One forward from `position` and its greedy token (`LlamaRunner.generate`, temperature 0)."""
        logits = runner.forward(tokens=torch.tensor([tokens], dtype=torch.long),
                                input_pos=torch.tensor([position], dtype=torch.long))
        return next_token(logits, temperature=0.0, top_p=1.0)

    def generate(prompt_ids: list[int], max_new_tokens: int) -> Stats:
        start = time.perf_counter()
        logits = runner.forward(tokens=torch.tensor([prompt_ids], dtype=torch.long),
                                input_pos=torch.tensor([0], dtype=torch.long))
        prefill_ms = ms_since(start)
        token = next_token(logits, temperature=0.0, top_p=1.0)
        first_token_ms = ms_since(start)
        tick = time.perf_counter()
        generated = [token]
        for position in range(len(prompt_ids), len(prompt_ids) + max_new_tokens - 1):
            generated.append(step([generated[-1]], position))  # no stop at end of sequence
        return text_stats(prefill_ms, first_token_ms, ms_since(tick), len(prompt_ids), len(generated))

    return generate


if __name__ == "__main__":
    sys.exit(anchor_main(build, load))
