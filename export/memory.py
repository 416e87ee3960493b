"""Will an export fit this machine's memory? An estimate from the model's size, made before any work.

Measured peaks of the exporting process (2-core, 24 GiB machine; W = `materialized_bytes`, the
model's weights in memory after block-by-block loading and quantization):
    ONNX        ~ 1.1 W: the weights plus one float32 block; the graphs are traced from a hollow
                model and written tensor by tensor (LLaVA-1.5-7B int4: W = 8.8 GiB, peak 10.0 GiB).
    ExecuTorch  ~ W + 3.5 P, P = `packed_bytes`, the size of XNNPACK's packed weights: each
                weight is lowered once (one method per weight, `models.stateful`), but lowering
                holds about 3.5x its packed bytes next to the model (named-data bytes, a copy of
                the integer codes, packing transients): eight int4 4096 x 11008 linears, P = 194
                MB, +0.67 GiB; 3-layer real-width int4, W = 1.46 GiB, P = 0.56 GiB, peak 4.4 GiB.
                LLaVA-1.5-7B int4: W = 8.8 GiB, P = 4.7 GiB, about 26 GiB.
"""

from __future__ import annotations

import os

from torch import nn

from models import ModelSpec, build_random_model
from models.quantize import GROUP_SIZE, Quantization, materialized_bytes, quantized_linear_weights

GIB = 2**30
# Interpreter, torch and the exporters' own code and graphs.
BASE_BYTES = int(0.75 * GIB)
ONNX_FACTOR = 1.15
# What XNNPACK's lowering holds, per byte of its packed weights (measured, see above).
LOWERING_FACTOR = 3.5
# Memory the system and other processes keep: an export is planned to leave this much free.
HEADROOM_BYTES = 2 * GIB
# Bytes per weight in XNNPACK's packed copy: 4- or 8-bit codes and a bfloat16 scale per group.
PACKED_BYTES_PER_WEIGHT = {Quantization.INT4: 0.5 + 2 / GROUP_SIZE, Quantization.INT8: 1 + 2 / GROUP_SIZE}


def packed_bytes(model: nn.Module, quantization: Quantization) -> int:
    """Bytes of XNNPACK's packed copy of `model`'s delegated weights: every linear and convolution
    (float32 as they are, quantized linears as codes and scales); the embeddings stay undelegated.
    Works on the meta device."""
    quantized = quantized_linear_weights(model, quantization)
    total = 0
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            continue
        weight = module.weight
        if id(weight) in quantized:
            total += int(weight.numel() * PACKED_BYTES_PER_WEIGHT[quantization])
        else:
            total += 4 * weight.numel()
    return total


def estimated_peak_bytes(spec: ModelSpec, quantization: Quantization, backend: str) -> int:
    """The exporting process's peak resident memory for one backend, estimated from the spec."""
    model = build_random_model(spec.name)  # on the meta device: shapes only
    weights = materialized_bytes(model, quantization)
    if backend == "onnx":
        return BASE_BYTES + int(ONNX_FACTOR * weights)
    return BASE_BYTES + weights + int(LOWERING_FACTOR * packed_bytes(model, quantization))


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(spec: ModelSpec, quantization: Quantization, backends: list[str]) -> dict[str, int]:
    """{backend: estimated peak bytes} of the backends whose export would not fit this machine's
    memory, less `HEADROOM_BYTES`."""
    available = physical_memory_bytes() - HEADROOM_BYTES
    estimates = {backend: estimated_peak_bytes(spec, quantization, backend) for backend in backends}
    return {backend: peak for backend, peak in estimates.items() if peak > available}


def describe_misfit(spec: ModelSpec, quantization: Quantization, misfits: dict[str, int]) -> str:
    needs = ", ".join(f"{backend} about {peak / GIB:.0f} GiB" for backend, peak in misfits.items())
    return (
        f"exporting {spec.name} ({quantization.value} weights) needs more memory than this machine has "
        f"({physical_memory_bytes() / GIB:.0f} GiB): {needs}"
    )
