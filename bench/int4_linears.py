"""The int4 linears alone at one token (a decode step's M = 1), against this machine's read rate.

A model's decoder layers without their attention and norms, just the seven linears (q, k, v, o,
gate, up, down) at the real widths, each reading its own input as in a decoder layer, random
weights, quantized as the toolchain quantizes them (`models.quantize`: 4 bits, a bfloat16-valued
scale per 32 input channels) and exported as it exports them: ONNX Runtime's MatMulNBits at
`accuracy_level` 0 (the exact profile) and 4 (fast), q, k, v and gate, up joined as in the artifacts,
from the same graph and weights (`export.onnx_weights`), opened as the runtime opens them; and
XNNPACK's 8da4w linears through ExecuTorch (`export.executorch.save_pte`). `--layers` copies,
far larger than the caches. GB/s = the bytes of codes and scales one call reads (scales as each
backend stores them, `runtime.flops.linear_weight_bytes`) / its time; "of read rate" puts that against
`runtime.limits`' memory read rate. A decode step cannot go faster than its linears do here: this
is the ceiling each backend's kernels set on "decode of bandwidth bound" in `make bench`.
Run with `make bench-linears [MODEL=...]`; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tabulate import tabulate
from torch import Tensor, nn

from models.quantize import QUANTIZED_BLOCKS, Quantization, quantize_block
from models.registry import TextModelSpec, get_spec
from runtime.cli import write_report
from runtime.flops import linear_weight_bytes

DEFAULT_JSON = Path("bench/results/int4_linears-{model}.json")
PROFILES = {"ONNX Runtime, exact (accuracy_level 0)": "exact", "ONNX Runtime, fast (accuracy_level 4)": "fast"}
EXECUTORCH = "ExecuTorch, XNNPACK 8da4w"


class Linears(nn.Module):
    """`layers` decoder layers' linears, each reading what it reads in a decoder layer: q, k and v one
    input of width d, gate and up another, o one of heads * head_dim, down one of ffn. Each layer has
    its own inputs, rows of x [layers, 2, d], a [layers, heads * head_dim] and h [layers, ffn], so that
    the exporter joins q, k, v and gate, up of one layer (`export.onnx_weights`) and nothing across
    layers. Returns every output."""

    def __init__(self, text: TextModelSpec, layers: int):
        super().__init__()
        d, ffn = text.hidden_size, text.intermediate_size
        head_dim = d // text.num_attention_heads
        q, kv = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
        shapes = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, ffn), "up": (d, ffn), "down": (ffn, d)}
        # skip_init: no memory is touched until a layer gets its random weights (`quantize_layers`).
        self.layers = nn.ModuleList(
            nn.ModuleDict({name: nn.utils.skip_init(nn.Linear, i, o, bias=False) for name, (i, o) in shapes.items()})
            for _ in range(layers)
        )
        self.shapes = ((layers, 2, d), (layers, q), (layers, ffn))

    def forward(self, x: Tensor, a: Tensor, h: Tensor) -> tuple[Tensor, ...]:
        outputs = []
        for i, layer in enumerate(self.layers):
            attention, mlp = x[i, 0:1], x[i, 1:2]
            inputs = {"q": attention, "k": attention, "v": attention, "gate": mlp, "up": mlp}
            inputs.update(o=a[i : i + 1], down=h[i : i + 1])
            outputs += [linear(inputs[name]) for name, linear in layer.items()]
        return tuple(outputs)

    def example_inputs(self) -> tuple[Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return tuple(torch.randn(shape, generator=generator) for shape in self.shapes)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def quantize_layers(self, seed: int = 0) -> None:
        """Random weights (std 0.02), quantized to int4 one layer at a time."""
        generator = torch.Generator().manual_seed(seed)
        for i, layer in enumerate(self.layers):
            for linear in layer.values():
                linear.weight.data = torch.randn(linear.weight.shape, generator=generator) * 0.02
            quantize_block(f"{QUANTIZED_BLOCKS[0]}{i}", layer, Quantization.INT4)


def onnx_runs(module: Linears, folder: Path) -> dict[str, Callable[[], object]]:
    """One ready-to-run call per ONNX profile; `module` traced while its weights are still hollow."""
    import onnxruntime as ort

    from export.onnx import save_onnx
    from export.onnx_weights import WeightFile, attach_weights
    from runtime.backends.onnx import session_options

    inputs = module.example_inputs()
    program = torch.export.export(module, inputs, strict=False)
    module.quantize_layers()
    weights = dict(module.named_parameters())
    names = {name: name for name in weights}
    runs = {}
    with WeightFile(folder) as store:
        paths = {
            label: save_onnx(
                program,
                folder / f"{profile}.onnx",
                weights=partial(attach_weights, weights=weights, names=names, store=store, profile=profile),
            )
            for label, profile in PROFILES.items()
        }
    for label, path in paths.items():
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
        runs[label] = partial(session.run, None, feeds)
    return runs


def executorch_run(module: Linears, folder: Path) -> Callable[[], object]:
    from executorch.runtime import Runtime

    from export.executorch import save_pte

    inputs = module.example_inputs()
    path = save_pte(torch.export.export(module, inputs, strict=False), folder / "linears.pte")
    return partial(Runtime.get().load_program(path).load_method("forward").execute, list(inputs))


def main() -> None:
    from runtime.limits import measure_limits, seconds

    parser = argparse.ArgumentParser(prog="python -m bench.int4_linears", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-1.5-7b", help="a registered model: its language model's widths")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers' linears per call")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls (median reported)")
    parser.add_argument("--json", type=Path, help=f"default: {DEFAULT_JSON}")
    args = parser.parse_args()
    if args.layers < 1:
        parser.error(f"--layers must be >= 1, got {args.layers}")

    text = get_spec(args.model).text
    print("measuring this machine's read rate ...", flush=True)
    limits = measure_limits()
    module = Linears(text, args.layers).eval().requires_grad_(False)
    parameters = module.parameter_count()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        print(f"exporting {args.layers} layers' linears ({parameters / 1e6:.0f} M parameters) ...", flush=True)
        runs = {label: ("onnx", run) for label, run in onnx_runs(module, Path(folder)).items()}
        runs[EXECUTORCH] = ("executorch", executorch_run(module, Path(folder)))
        for label, (backend, run) in runs.items():
            print(f"timing {label} ...", flush=True)
            call = seconds(run, args.repeat, statistics.median)
            gbps = linear_weight_bytes(parameters, quantization="int4", backend=backend) / call / 1e9
            results[label] = {"ms_per_layer": call * 1e3 / args.layers, "gbps": gbps, "of_read_rate": gbps / limits.read_gbps}

    rows = [[label, f"{r['ms_per_layer']:.2f}", f"{r['gbps']:.1f}", f"{100 * r['of_read_rate']:.0f} %"] for label, r in results.items()]
    print(
        f"\n{args.model}'s int4 linears at M = 1, {args.layers} layers per call, median of {args.repeat} "
        f"(memory read rate {limits.read_gbps:.1f} GB/s, {torch.get_num_threads()} threads)"
    )
    print(tabulate(rows, headers=["backend", "ms per layer", "GB/s", "of read rate"]))
    write_report(
        {
            "model": args.model,
            "layers": args.layers,
            "parameters": parameters,
            "limits": limits.to_dict(),
            "machine": {"processor": platform.processor(), "threads": torch.get_num_threads()},
            "results": results,
        },
        args.json or Path(str(DEFAULT_JSON).format(model=args.model)),
    )


if __name__ == "__main__":
    main()
