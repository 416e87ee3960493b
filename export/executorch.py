"""ExportedProgram(s) -> one .pte file, XNNPACK-delegated where XNNPACK has kernels."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from torch.export import ExportedProgram
from transformers import PreTrainedModel

from models.decoder import head_dim


def _xnnpack_partitioner():
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ExecuTorch export needs the executorch package: run `make setup`") from error
    return XnnpackPartitioner()


def _tanh_gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU's tanh approximation in elementary ops; any other GELU stays as it is (NotImplemented)."""
    if approximate != "tanh":
        return NotImplemented
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))


def spell_out_tanh_gelu(program: ExportedProgram) -> ExportedProgram:
    """`program` with every tanh-approximated GELU (SigLIP's MLPs) written as its formula.

    ExecuTorch 1.4.1's XNNPACK delegate computes `gelu(x, approximate="tanh")` as the exact erf
    GELU: 4.7e-4 off, which a 26-layer tower carries into the logits. Its tanh, multiplies and
    adds are exact to float32 rounding. Programs without such a GELU are returned unchanged.
    """
    gelu = torch.ops.aten.gelu.default
    if not any(
        node.target is gelu and node.kwargs.get("approximate") == "tanh" for node in program.graph.nodes
    ):
        return program
    return program.run_decompositions({gelu: _tanh_gelu})


def runner_metadata(model: PreTrainedModel, max_seq_len: int, prune_layer: int) -> dict[str, int | bool | list[int]]:
    """The .pte's constant methods, `runtime.contract.PTE_METADATA` in order."""
    generation, text = model.generation_config, model.config.text_config
    eos = generation.eos_token_id
    return {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": max_seq_len,
        "get_bos_id": generation.bos_token_id,
        "get_eos_ids": list(eos) if isinstance(eos, (list, tuple)) else [eos],
        "get_vocab_size": text.vocab_size,
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_n_layers": text.num_hidden_layers,
        "get_n_kv_heads": text.num_key_value_heads,
        "get_head_dim": head_dim(text),
        "get_prune_layer": prune_layer,
    }


def save_pte(
    programs: ExportedProgram | dict[str, ExportedProgram],
    path: Path,
    metadata: dict[str, int | bool | list[int]] | None = None,
) -> Path:
    """Lower one program (method `forward`) or several named methods into one .pte file, with
    `metadata` as constant methods (`runner_metadata`).

    Buffers the methods mutate (the in-place KV cache, `models.stateful`) are planned once and
    shared by name across the methods: the Python runtime gives a program's methods one memory
    arena, where unshared buffers would overwrite each other.

    XNNPACK takes the linears, matmuls and elementwise ops it has kernels for,
    the rest (the selection's loops and index ops) runs on ExecuTorch's portable kernels.

    Memory: lowering holds XNNPACK's packed copy of every delegated weight per method next to
    the programs' own; the file is then streamed from the serialized pieces (`write_to_file`)
    rather than joined into one more copy of the whole program (`.buffer`). The edge dialect
    verifier is skipped, as in ExecuTorch's LLM export (`extension/llm/export/builder.py`): it
    re-runs every node on fake tensors, minutes for a 7B graph, and the programs come from
    torch.export, which verified them.
    """
    partitioner = _xnnpack_partitioner()
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    if isinstance(programs, ExportedProgram):
        programs = {"forward": programs}
    programs = {name: spell_out_tanh_gelu(program) for name, program in programs.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edge = to_edge_transform_and_lower(
        programs,
        partitioner=[partitioner],
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        constant_methods=metadata,
    )
    executorch_program = edge.to_executorch(
        ExecutorchBackendConfig(
            memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True), emit_mutable_buffer_names=True
        )
    )
    del edge
    with open(path, "wb") as file:
        executorch_program.write_to_file(file)
    return path

