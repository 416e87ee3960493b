"""ExportedProgram(s) -> one .pte file, XNNPACK-delegated where XNNPACK has kernels."""

from __future__ import annotations

from pathlib import Path

from torch.export import ExportedProgram


def _xnnpack_partitioner():
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ExecuTorch export needs the executorch package: run `make setup`") from error
    return XnnpackPartitioner()


def save_pte(programs: ExportedProgram | dict[str, ExportedProgram], path: Path) -> Path:
    """Lower one program (method `forward`) or several named methods into one .pte file.

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
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    if isinstance(programs, ExportedProgram):
        programs = {"forward": programs}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edge = to_edge_transform_and_lower(
        programs, partitioner=[partitioner], compile_config=EdgeCompileConfig(_check_ir_validity=False)
    )
    executorch_program = edge.to_executorch()
    del edge
    with open(path, "wb") as file:
        executorch_program.write_to_file(file)
    return path

