"""This machine's limits, measured in a few seconds: what a prefill and a decode step could reach.

    float32 GEMM    GFLOP/s of a large float32 matrix product, the better of numpy's BLAS and ONNX
                    Runtime's MatMul (MLAS), all cores
    int8 GEMM       GOP/s of ONNX Runtime's MatMulInteger (uint8 x int8 -> int32), the int8
                    compute that MatMulNBits' fast profile and XNNPACK's 8da4w linears use
    memory read     GB/s of summing an array far larger than the caches, the better of numpy (one
                    core) and ONNX Runtime's ReduceSum over rows (all cores)

`runtime.bench` puts each measured time next to them: a prefill against the GEMM rate of the
arithmetic its linears run (`compute_kind`), a decode step against the time to read its weights
and KV cache once at the measured bandwidth. Each figure is the best of a few repeats.

On this project's 2-vCPU virtual machines the read rate is not steady: mostly 35-37 GB/s (1316
sums in a row over 40 s, none faster), but one session's probes also read 31 and, in about a
third of them, 63-68 GB/s throughout their few seconds (cause not found; not the array's pages:
the same array read 65 and 37 on two probes). Kernels' rates moved by +-20 % over the same half
hour. A fraction of the bound is only as steady as that: compare within one run, with its figure
(every report holds it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

GEMM_SIZE = 1024  # M; the products are M x K times K x N, K = N = 4 M
READ_BYTES = 1 << 30
READ_ROWS = 64  # ONNX Runtime sums each row on its own: one row per task
REPEATS = 3


@dataclass(frozen=True)
class MachineLimits:
    float32_gflops: float
    int8_gops: float
    read_gbps: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_limits() -> MachineLimits:
    """The three rates (about 10 s in all on 2 cores)."""
    m, k, n = GEMM_SIZE, 4 * GEMM_SIZE, 4 * GEMM_SIZE
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    products = 2 * m * k * n / 1e9
    float32 = products / min(seconds(lambda: a @ b), seconds(_one_op("MatMul", a, b, np.float32)))
    x, weight = rng.integers(0, 255, size=(m, k), dtype=np.uint8), rng.integers(-8, 8, size=(k, n), dtype=np.int8)
    int8 = products / seconds(_one_op("MatMulInteger", x, weight, np.int32))
    data = np.ones((READ_ROWS, READ_BYTES // 4 // READ_ROWS), dtype=np.float32)
    axes = np.array([1], dtype=np.int64)
    read = READ_BYTES / 1e9 / min(seconds(data.sum), seconds(_one_op("ReduceSum", data, axes, np.float32)))
    return MachineLimits(float32_gflops=float32, int8_gops=int8, read_gbps=read)


def seconds(run: Callable[[], object], repeats: int = REPEATS, pick: Callable[[list[float]], float] = min) -> float:
    """`pick` (min, statistics.median) of `repeats` timed calls of `run`, after one warm-up call
    (first-touch pages, thread pools, kernel selection and packing)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return pick(times)


def _one_op(op: str, x: np.ndarray, constant: np.ndarray, out_dtype: type) -> Callable[[], object]:
    """ONNX Runtime running `op(x, constant)` (the constant an initializer), ready to run on `x`."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x", "constant"], ["y"])],
        op,
        [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), list(x.shape))],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), None)],
        initializer=[numpy_helper.from_array(constant, "constant")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})
