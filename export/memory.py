"""Will an export fit this machine's memory? An estimate from the model's size, made before any work.

Measured peaks of the exporting process (2-core, 24 GiB machine; W = `materialized_bytes`, the
model's weights in memory after block-by-block loading and quantization):
    ONNX        ~ 1.1 W: the weights plus one float32 block; the graphs are traced from a hollow
                model and written tensor by tensor (LLaVA-1.5-7B int4: W = 8.8 GiB, peak 10.0 GiB).
    ExecuTorch  ~ W + 3.5 P, P = `packed_bytes` of the largest .pte method, the size of XNNPACK's
                packed weights: the methods are lowered one at a time, the language model in
                groups of layers (`lowering_layers_per_method`), each method's weights freed once
                lowered (`export.executorch.save_pte`), but lowering one method holds a few times
                its packed bytes (a copy of its subgraphs, the serialized bytes, packing
                transients). A large model is lowered in a process of its own (`OWN_PROCESS_BYTES`),
                so this is that process's peak. LLaVA-1.5-7B int4 (W = 8.8 GiB, largest method the
                float32 vision tower, 1.26 GiB, layers two per method): 13.4 GiB measured (load 11.1
                GiB), 14.0 estimated. Lowering the whole .pte at once held about W + 3.5 x 4.7 GiB
                (every method's packed weights), 26 GiB.
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
# XNNPACK packed bytes of one .pte method's decoder layers at most (`lowering_layers_per_method`):
# two LLaVA-1.5-7B int4 layers.
METHOD_PACKED_BYTES = GIB // 4
# An ExecuTorch export estimated above this lowers in a process of its own (`export.pipeline`).
OWN_PROCESS_BYTES = 4 * GIB
# Memory the system and other processes keep: an export is planned to leave this much free.
HEADROOM_BYTES = 2 * GIB
# Bytes per weight in XNNPACK's packed copy: 4- or 8-bit codes and a bfloat16 scale per group.
PACKED_BYTES_PER_WEIGHT = {Quantization.INT4: 0.5 + 2 / GROUP_SIZE, Quantization.INT8: 1 + 2 / GROUP_SIZE}


def packed_bytes(model: nn.Module, quantization: Quantization, part: nn.Module | None = None) -> int:
    """Bytes of XNNPACK's packed copy of the delegated weights of `part` of `model` (default all
    of it): every linear and convolution (float32 as they are, quantized linears as codes and
    scales); the embeddings stay undelegated. Works on the meta device."""
    quantized = quantized_linear_weights(model, quantization)
    total = 0
    for module in (model if part is None else part).modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            continue
        weight = module.weight
        if id(weight) in quantized:
            total += int(weight.numel() * PACKED_BYTES_PER_WEIGHT[quantization])
        else:
            total += 4 * weight.numel()
    return total


def _largest_method_bytes(model: nn.Module, quantization: Quantization, layers_per_method: int | None) -> int:
    """Packed bytes of the largest .pte method: the vision side, or a group of decoder layers with the LM head."""
    layers = model.model.language_model.layers
    per_method = len(layers) if layers_per_method is None else min(layers_per_method, len(layers))
    text = per_method * packed_bytes(model, quantization, layers[0]) + packed_bytes(model, quantization, model.lm_head)
    return max(text, packed_bytes(model, quantization) - packed_bytes(model, quantization, model.model.language_model) - packed_bytes(model, quantization, model.lm_head))


def lowering_layers_per_method(spec: ModelSpec, quantization: Quantization) -> int | None:
    """Decoder layers per .pte method so that a method packs at most `METHOD_PACKED_BYTES`
    (`export.graphs.build_pte_graphs`); None when all of them fit in one."""
    return _layers_per_method(build_random_model(spec.name), quantization)  # on the meta device: shapes only


def _layers_per_method(model: nn.Module, quantization: Quantization) -> int | None:
    layers = model.model.language_model.layers
    per_layer = packed_bytes(model, quantization, layers[0])
    per_method = max(1, METHOD_PACKED_BYTES // per_layer)
    return None if per_method >= len(layers) else per_method


def estimated_peak_bytes(spec: ModelSpec, quantization: Quantization, backend: str) -> int:
    """The exporting process's peak resident memory for one backend, estimated from the spec."""
    model = build_random_model(spec.name)  # on the meta device: shapes only
    weights = materialized_bytes(model, quantization)
    if backend == "onnx":
        return BASE_BYTES + int(ONNX_FACTOR * weights)
    largest = _largest_method_bytes(model, quantization, _layers_per_method(model, quantization))
    return BASE_BYTES + weights + int(LOWERING_FACTOR * largest)


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
