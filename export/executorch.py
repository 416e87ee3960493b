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
    """
    partitioner = _xnnpack_partitioner()
    from executorch.exir import to_edge_transform_and_lower

    if isinstance(programs, ExportedProgram):
        programs = {"forward": programs}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edge = to_edge_transform_and_lower(programs, partitioner=[partitioner])
    path.write_bytes(edge.to_executorch().buffer)
    return path
