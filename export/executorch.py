"""ExportedProgram(s) -> one .pte file, XNNPACK-delegated where XNNPACK has kernels."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import ExportedProgram
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
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
    *,
    release: dict[str, nn.Module] | None = None,
) -> Path:
    """Lower one program (method `forward`) or several named methods into one .pte file, with
    `metadata` as constant methods (`runner_metadata`).

    Buffers the methods mutate (the in-place KV cache, `models.stateful`) are planned once and
    shared by name across the methods: the Python runtime gives a program's methods one memory
    arena, where unshared buffers would overwrite each other.

    XNNPACK takes the linears, matmuls and elementwise ops it has kernels for,
    the rest (the selection's loops and index ops) runs on ExecuTorch's portable kernels.

    Memory: the methods are lowered one at a time, in order. executorch 1.4.1's lowering deep-copies
    every delegated subgraph of the methods it is given at once and keeps the originals in the
    lowered modules, next to XNNPACK's serialized copy of each weight; one method at a time bounds
    that to the largest method (`export.graphs.build_pte_graphs` groups the layers). With `release`
    ({method: the module it was exported from}), each method's weights are freed once it is lowered
    (the module's parameters and the lowered modules' originals, storage and all), unless a later
    method reads them: XNNPACK's serialized copy is all the file needs, and the export's memory then
    stays near the model's own size. Those modules are unusable afterwards. The lowered methods are
    joined by constructing the `EdgeProgramManager` directly (executorch calls that constructor
    internal; its public `to_edge_transform_and_lower` lowers every method at once). What the
    lowering leaves in the process once the file is written (measured at 7B: about the model's
    size, outside any tensor Python sees) is why `export.pipeline` lowers a large model in a process
    of its own. The file is streamed from
    the serialized pieces (`write_to_file`) rather than joined into one more copy of the program.
    The edge dialect verifier is skipped, as in ExecuTorch's LLM export
    (`extension/llm/export/builder.py`): it re-runs every node on fake tensors, minutes for a 7B
    graph, and the programs come from torch.export, which verified them.
    """
    from executorch.exir import EdgeCompileConfig, EdgeProgramManager, ExecutorchBackendConfig, to_edge_transform_and_lower

    if isinstance(programs, ExportedProgram):
        programs = {"forward": programs}
    release = release or {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compile_config = EdgeCompileConfig(_check_ir_validity=False)
    names = list(programs)
    lowered = {}
    for i, name in enumerate(names):
        edge = to_edge_transform_and_lower(
            {name: spell_out_tanh_gelu(programs[name])}, partitioner=[_xnnpack_partitioner()], compile_config=compile_config
        )
        lowered[name] = edge.exported_program(name)
        del edge
        if name in release:
            # What a later method exports from, or a lowered one serializes itself (undelegated constants).
            still_read = [*(programs[later] for later in names[i + 1:]), *lowered.values()]
            keep = {storage.data_ptr() for program in still_read for storage in _storages(_program_tensors(program))}
            _free(_storages(_delegated_originals(lowered[name], release[name])), keep=keep)
    manager = EdgeProgramManager(lowered, constant_methods=metadata, compile_config=compile_config)
    del lowered
    executorch_program = manager.to_executorch(
        ExecutorchBackendConfig(memory_planning_pass=_scan_aware_planning(), emit_mutable_buffer_names=True)
    )
    del manager
    with open(path, "wb") as file:
        executorch_program.write_to_file(file)
    return path


def _scan_aware_planning():
    """executorch's memory planning (mutable buffers shared across methods) without the memory it
    reserves for the inputs a `scan` body shares with its caller.

    The emitter binds a scan body's carry and additional-input placeholders to the calling graph's
    own values (`exir/emit/_emitter.py`, `_emit_scan`); only the slices of `xs` need memory of the
    body's. executorch 1.4.1's planner reserves every placeholder of a scan body all the same
    (`exir/memory_planning.py`, `_apply_algo_to_submodules`), memory that is never read: at
    N = 12544 the selection's 630 MB similarity, an additional input of the greedy stage's scan,
    was planned twice. Here those placeholders are left out of the plan.
    """
    from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite
    from executorch.exir.passes import MemoryPlanningPass

    class ScanAwarePlanning(MemoryPlanningPass):
        def run(self, graph_module: torch.fx.GraphModule, graph_signature=None):
            bound = {id(spec) for spec in _bound_scan_input_specs(graph_module)}
            suite = MemoryPlanningAlgorithmSuite()

            def plan(alignment, specs, module, signature, extra_padding):
                planned = [spec for spec in specs if id(spec) not in bound]
                return suite(alignment, planned, module, signature, extra_padding)

            self.memory_planning_algo = plan
            return super().run(graph_module, graph_signature)

    return ScanAwarePlanning(share_mutable_buffers=True)


def _bound_scan_input_specs(graph_module: torch.fx.GraphModule) -> Iterator[Any]:
    """The TensorSpecs of the carry and additional-input placeholders of every `scan` body in
    `graph_module` and its control-flow submodules (scan(combine_fn, init, xs, additional_inputs):
    the body's placeholders are the carries, then one slice per xs, then the additional inputs)."""
    for node in graph_module.graph.nodes:
        if node.op != "get_attr":
            continue
        submodule = getattr(graph_module, node.target)
        if isinstance(submodule, torch.fx.GraphModule):
            yield from _bound_scan_input_specs(submodule)
    for node in graph_module.graph.nodes:
        if node.target is not torch.ops.higher_order.scan:
            continue
        body = getattr(graph_module, node.args[0].target)
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        carries, slices = len(node.args[1]), len(node.args[2])
        for placeholder in placeholders[:carries] + placeholders[carries + slices:]:
            specs = placeholder.meta.get("spec")
            yield from specs if isinstance(specs, (list, tuple)) else [specs]


def _program_tensors(program: ExportedProgram) -> Iterator[Tensor]:
    yield from program.state_dict.values()
    yield from program.constants.values()


def _delegated_originals(program: ExportedProgram, module: nn.Module) -> Iterator[Tensor]:
    """`module`'s parameters and the weights the lowered modules of `program` keep of their
    originals (what XNNPACK serialized)."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    yield from module.parameters()
    for lowered in program.graph_module.modules():
        if isinstance(lowered, LoweredBackendModule):
            yield from _program_tensors(lowered.original_module)


def _storages(tensors: Iterable[Tensor]) -> Iterator[torch.UntypedStorage]:
    """The storages behind `tensors`, a tensor subclass's (torchao's quantized weights) inner ones."""
    for tensor in tensors:
        if is_traceable_wrapper_subclass(tensor):
            inner, _ = tensor.__tensor_flatten__()
            yield from _storages(getattr(tensor, name) for name in inner)
        elif tensor.device.type == "cpu":
            yield tensor.untyped_storage()


def _free(storages: Iterable[torch.UntypedStorage], *, keep: set[int]) -> None:
    """Shrink each storage to nothing (its memory returns at once, whoever refers to it), but those
    at `keep` and those that cannot shrink: a checkpoint's memory-mapped tensors, whose clean pages
    the system reclaims by itself."""
    for storage in storages:
        if storage.data_ptr() not in keep and storage.nbytes() and storage.resizable():
            storage.resize_(0)
