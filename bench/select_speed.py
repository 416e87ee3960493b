"""Selection time at LLaVA-1.5-7B size: reference, eager static, ONNX Runtime, ExecuTorch.

N = 576 image tokens (24 x 24), keys and hidden states 4096 wide, keep R in {64, 128, 192}.
Prints a table and writes JSON. Run with `make bench-select`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tabulate import tabulate

from export.executorch import save_pte
from export.onnx import save_onnx
from pruning_graph import VLMPrunerSelect, reference_select, select_tokens
from pruning_graph.synthetic import make_image

GRID = (24, 24)
WIDTH = 4096
KEEPS = (64, 128, 192)
DEFAULT_JSON = Path("bench/results/select_speed.json")


def median_ms(run: Callable[[], object], *, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_keep(keep: int, keys: torch.Tensor, hidden: torch.Tensor, folder: Path, repeat: int) -> dict[str, float]:
    import onnxruntime as ort
    from executorch.runtime import Runtime

    module = VLMPrunerSelect(GRID, keep).eval()
    program = torch.export.export(module, (keys, hidden), strict=False)
    session = ort.InferenceSession(str(save_onnx(program, folder / f"select{keep}.onnx")))
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), (keys, hidden))}
    method = Runtime.get().load_program(save_pte(program, folder / f"select{keep}.pte")).load_method("forward")

    with torch.inference_mode():
        return {
            "reference": median_ms(lambda: reference_select(keys, hidden, GRID, keep), warmup=1, repeat=3),
            "eager static": median_ms(lambda: select_tokens(keys, hidden, GRID, keep), warmup=2, repeat=repeat),
            "onnxruntime": median_ms(lambda: session.run(None, feeds), warmup=2, repeat=repeat),
            "executorch": median_ms(lambda: method.execute([keys, hidden]), warmup=2, repeat=repeat),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keeps", type=int, nargs="+", default=list(KEEPS), help="keep counts R to time")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per measurement (median reported)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = parser.parse_args()

    keys, hidden = make_image("objects", GRID, WIDTH, WIDTH, seed=0)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for keep in args.keeps:
            print(f"keep {keep}: exporting and timing ...", flush=True)
            results[keep] = bench_keep(keep, keys, hidden, Path(folder), args.repeat)

    backends = list(next(iter(results.values())))
    rows = [[keep, *(f"{times[b]:.1f}" for b in backends)] for keep, times in results.items()]
    print(f"\nSelection time, median ms (N = {GRID[0] * GRID[1]}, dk = d = {WIDTH}, {torch.get_num_threads()} threads)")
    print(tabulate(rows, headers=["keep", *backends]))

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "grid": GRID,
                "width": WIDTH,
                "unit": "ms (median)",
                "machine": {"processor": platform.processor(), "threads": torch.get_num_threads()},
                "results": {str(k): v for k, v in results.items()},
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
