"""Will an export fit this machine's memory? An estimate from the model's size, made before any work.

Measured peaks of the exporting process (2-core, 24 GiB machine; W = `materialized_bytes`, the
model's weights in memory after block-by-block loading and quantization):
    ONNX        ~ 1.1 W: the weights plus one float32 block; the graphs are traced from a hollow
                model and written tensor by tensor (LLaVA-1.5-7B int4: W = 8.8 GiB, peak 10.0 GiB).
    ExecuTorch  ~ 3 W: torch.export keeps the weights, `to_edge` copies the quantized codes
                while unwrapping torchao's tensors, and XNNPACK's preprocessing adds a packed
                copy per method (3-layer real-width int4: W = 1.46 GiB, peak 4.9 GiB; the 7B
                int4 lowering was killed at 21.9 GiB on this machine). ExecuTorch's own LLaVA
                example states 32 GiB for its 7B export.
"""

from __future__ import annotations

import os

from models import ModelSpec, build_random_model
from models.quantize import Quantization, materialized_bytes

GIB = 2**30
# Interpreter, torch and the exporters' own code and graphs.
BASE_BYTES = int(0.75 * GIB)
PEAK_FACTORS = {"onnx": 1.15, "executorch": 3.0}


def estimated_peak_bytes(spec: ModelSpec, quantization: Quantization, backend: str) -> int:
    """The exporting process's peak resident memory for one backend, estimated from the spec."""
    model = build_random_model(spec.name)  # on the meta device: shapes only
    return BASE_BYTES + int(PEAK_FACTORS[backend] * materialized_bytes(model, quantization))


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(spec: ModelSpec, quantization: Quantization, backends: list[str]) -> dict[str, int]:
    """{backend: estimated peak bytes} of the backends whose export would not fit this machine's memory."""
    available = physical_memory_bytes()
    estimates = {backend: estimated_peak_bytes(spec, quantization, backend) for backend in backends}
    return {backend: peak for backend, peak in estimates.items() if peak > available}


def describe_misfit(spec: ModelSpec, quantization: Quantization, misfits: dict[str, int]) -> str:
    needs = ", ".join(f"{backend} about {peak / GIB:.0f} GiB" for backend, peak in misfits.items())
    return (
        f"exporting {spec.name} ({quantization.value} weights) needs more memory than this machine has "
        f"({physical_memory_bytes() / GIB:.0f} GiB): {needs}"
    )
