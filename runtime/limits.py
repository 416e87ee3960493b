"""This machine's limits, measured in a few seconds: what a prefill and a decode step could reach.

    float32 GEMM    GFLOP/s of a large float32 matrix product (numpy's BLAS, all cores)
    int8 GEMM       GOP/s of ONNX Runtime's MatMulInteger (uint8 x int8 -> int32), the int8
                    compute that MatMulNBits' fast profile and XNNPACK's 8da4w linears use
    memory read     GB/s of summing an array far larger than the caches

`runtime.bench` puts each measured time next to them: a prefill against the GEMM rate of the
arithmetic its linears run (`compute_kind`), a decode step against the time to read its weights
and KV cache once at the measured bandwidth. Each figure is the best of a few repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

GEMM_SIZE = 1024  # M; the products are M x K times K x N, K = N = 4 M
READ_BYTES = 1 << 30
REPEATS = 3


@dataclass(frozen=True)
class MachineLimits:
    float32_gflops: float
    int8_gops: float
    read_gbps: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_limits() -> MachineLimits:
    """The three rates, each the best of `REPEATS` runs (about 5 s in all on 2 cores)."""
    m, k, n = GEMM_SIZE, 4 * GEMM_SIZE, 4 * GEMM_SIZE
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    float32 = 2 * m * k * n / _best_seconds(lambda: a @ b) / 1e9
    int8 = 2 * m * k * n / _best_seconds(_int8_matmul(m, k, n)) / 1e9
    data = np.ones(READ_BYTES // 4, dtype=np.float32)
    read = READ_BYTES / _best_seconds(data.sum) / 1e9
    return MachineLimits(float32_gflops=float32, int8_gops=int8, read_gbps=read)


def _best_seconds(run: Callable[[], object]) -> float:
    run()  # warm-up: first-touch pages, thread pools, kernel selection
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _int8_matmul(m: int, k: int, n: int) -> Callable[[], object]:
    """ONNX Runtime's MatMulInteger on random uint8 activations and int8 weights, ready to run."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-8, 8, size=(k, n), dtype=np.int8), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "weight"], ["y"])],
        "int8_gemm",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options)
    x = rng.integers(0, 255, size=(m, k), dtype=np.uint8)
    return lambda: session.run(None, {"x": x})
