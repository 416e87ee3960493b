"""Selection time and peak memory per method: reference, eager static, ONNX Runtime, ExecuTorch.

Keys and hidden states 4096 wide (LLaVA-1.5-7B), keep R = round(N * (1 - rate)), rate 88.9 %, for
N = 576 (LLaVA-1.5, one 24 x 24 view), 2928 (LLaVA-NeXT 2 x 2 tiles: the 24 x 24 base view, then
the 48 x 49 high-resolution view with its newline column), 3136 (16 video frames of 14 x 14) and
12544 (64 frames). Each method gets what it reads in the model: VLM-Pruner the image tokens' keys
and states; FastV 32 heads' attention rows of the last token; DART keys and final-normed states of
the image tokens and of 20 text tokens; DivPrune the projected image tokens. Peak memory is the
growth of the process's peak resident set during the first run (inputs excluded). Prints a table
and writes JSON. Run with `make bench-select [METHOD="vlm-pruner fastv dart divprune"]`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tabulate import tabulate

from torch import Tensor, nn

from export.executorch import save_pte
from export.onnx import save_onnx
from export.options import METHOD_NAMES
from pruning_graph import (
    DARTSelect,
    DivPruneSelect,
    FastVSelect,
    VLMPrunerSelect,
    dart_reference,
    divprune_reference,
    fastv_reference,
    reference_select,
)
from pruning_graph.synthetic import make_views
from runtime.cli import RESULTS_DIR, write_report

# N -> (views, whether views after the first end their rows with a newline token)
VIEWS = {
    576: (((24, 24),), False),
    2928: (((24, 24), (48, 49)), True),
    3136: (((14, 14),) * 16, False),
    12544: (((14, 14),) * 64, False),
}
WIDTH = 4096
RATE = 0.889
# FastV's attention heads (LLaVA-1.5-7B's) and DART's text tokens after the image.
HEADS = 32
TEXT_TOKENS = 20
# The reference is a Python loop over candidates: minutes beyond LLaVA-1.5's 576 tokens.
REFERENCE_MAX_N = 576
# Every size is exported by default (--export-max-n lowers it: the exports take 30-90 s each).
EXPORT_MAX_N = max(VIEWS)
DEFAULT_JSON = RESULTS_DIR / "select_speed.json"


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def median_ms(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(load: Callable[[], Callable[[], object]], repeat: int) -> dict[str, float]:
    """Peak memory of loading and a first run, then the median time of `repeat` more runs.

    The peak is the growth of the process's peak resident set (reset first, Linux), so it counts
    what a runtime allocates at load (ExecuTorch plans its memory then) and in the first run.
    """
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _rss_mib("VmRSS")
    run = load()
    run()
    return {"peak_mib": _rss_mib("VmHWM") - before, "ms": median_ms(run, repeat)}


@dataclass(frozen=True)
class SelectionCase:
    """One method's selection at one size: the module to export, its inputs, its reference."""

    module: nn.Module
    inputs: tuple[Tensor, ...]
    reference: Callable[[], object]


def selection_case(method: str, n: int) -> SelectionCase:
    """`method`'s selector of R = round(N (1 - RATE)) tokens at size `n`, on a generated image."""
    views, newline = VIEWS[n]
    keep = round(n * (1 - RATE))
    keys, hidden = make_views("objects", views, WIDTH, WIDTH, seed=0, newline=newline)
    if method == "vlm-pruner":
        return SelectionCase(VLMPrunerSelect(views, keep), (keys, hidden), partial(reference_select, keys, hidden, views, keep))
    if method == "fastv":
        scores = torch.randn(HEADS, n, generator=torch.Generator().manual_seed(0))
        attention = (scores * 4).softmax(dim=-1) * 0.5  # the image's share of each causal row
        return SelectionCase(FastVSelect(keep), (attention,), partial(fastv_reference, attention, keep))
    if method == "dart":
        text_keys, text_hidden = make_views("objects", ((4, TEXT_TOKENS // 4),), WIDTH, WIDTH, seed=1)
        inputs = (keys, _rms_norm(hidden), text_keys, _rms_norm(text_hidden))
        return SelectionCase(DARTSelect(keep), inputs, partial(dart_reference, *inputs, keep))
    if method == "divprune":
        return SelectionCase(DivPruneSelect(keep), (hidden,), partial(divprune_reference, hidden, keep))
    raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHOD_NAMES)}")


def _rms_norm(x: Tensor) -> Tensor:
    """A final norm's output without its weight: what DART's cosines read."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6)


def bench_size(method: str, n: int, folder: Path, repeat: int, export_max_n: int) -> dict[str, dict[str, float]]:
    case = selection_case(method, n)
    module = case.module.eval()
    results = {}
    with torch.inference_mode():
        if n <= REFERENCE_MAX_N:
            results["reference"] = measure(lambda: case.reference, repeat=1)
        results["eager static"] = measure(lambda: partial(module, *case.inputs), repeat)
    if n > export_max_n:
        return results

    import onnxruntime as ort
    from executorch.runtime import Runtime

    from runtime.backends.onnx import session_options  # as the runtime opens the prefill graph

    start = time.perf_counter()
    program = torch.export.export(module, case.inputs, strict=False)
    stem = folder / f"{method}-{n}"
    onnx_path, pte_path = save_onnx(program, stem.with_suffix(".onnx")), save_pte(program, stem.with_suffix(".pte"))
    results["export"] = {"s": time.perf_counter() - start}

    def load_onnx() -> Callable[[], object]:
        session = ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])
        return partial(session.run, None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), case.inputs)})

    def load_pte() -> Callable[[], object]:
        return partial(Runtime.get().load_program(pte_path).load_method("forward").execute, list(case.inputs))

    results["onnxruntime"] = measure(load_onnx, repeat)
    results["executorch"] = measure(load_pte, repeat)
    return results


def _cell(result: dict[str, float] | None, key: str, digits: int = 0) -> str:
    return "-" if result is None else f"{result[key]:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.select_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=["vlm-pruner"], help="selection methods")
    parser.add_argument("--sizes", type=int, nargs="+", choices=list(VIEWS), default=list(VIEWS), help="token counts N")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument(
        "--export-max-n", type=int, default=EXPORT_MAX_N, help="largest N run exported (ONNX Runtime, ExecuTorch)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = parser.parse_args()

    results: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            for n in args.sizes:
                print(f"{method}, N = {n}: timing ...", flush=True)
                results.setdefault(method, {})[n] = bench_size(method, n, Path(folder), args.repeat, args.export_max_n)

    backends = ("reference", "eager static", "onnxruntime", "executorch")
    rows = []
    for method, by_n in results.items():
        for n, result in by_n.items():
            cells = [f"{_cell(result.get(b), 'ms', 1)} / {_cell(result.get(b), 'peak_mib')}" for b in backends]
            row = [method, n, len(VIEWS[n][0]), round(n * (1 - RATE)), *cells, _cell(result.get("export"), "s", 1)]
            rows.append(row)
    print(
        f"\nSelection: median ms / peak MiB (dk = d = {WIDTH}, {torch.get_num_threads()} threads; '-': not run, "
        f"reference beyond N = {REFERENCE_MAX_N}, exported beyond N = {args.export_max_n})"
    )
    print(tabulate(rows, headers=["method", "N", "views", "keep", *backends, "export s"]))

    write_report(
        {
            "views": {str(n): VIEWS[n][0] for n in args.sizes},
            "width": WIDTH,
            "rate": RATE,
            "units": {"ms": "median ms", "peak_mib": "peak RSS growth of the first run, MiB", "s": "seconds"},
            "machine": {"processor": platform.processor(), "threads": torch.get_num_threads()},
            "results": {method: {str(n): r for n, r in by_n.items()} for method, by_n in results.items()},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
