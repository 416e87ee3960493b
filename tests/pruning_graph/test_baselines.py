"""The baseline selectors FastV, DART and DivPrune: static twin == reference on the generated
cases, the spec's tie and budget rules on hand-made inputs, input validation, and each exported
module in ONNX Runtime and ExecuTorch against eager at LLaVA-1.5-7B size."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.executorch import save_pte
from export.onnx import save_onnx
from pruning_graph import (
    DARTSelect,
    DivPruneSelect,
    FastVSelect,
    dart_reference,
    dart_reference_order,
    dart_select,
    divprune_reference,
    divprune_reference_order,
    divprune_select,
    fastv_reference,
    fastv_reference_order,
    fastv_select,
)
from pruning_graph.dart import dart_budgets
from tests.pruning_graph.baseline_cases import dart_cases, divprune_cases, fastv_cases, real_size_cases
from tests.pruning_graph.ordered import Ordered


class Method(NamedTuple):
    select: Callable
    reference: Callable
    module: type[nn.Module]
    reference_order: Callable


METHODS = {
    "fastv": Method(fastv_select, fastv_reference, FastVSelect, fastv_reference_order),
    "dart": Method(dart_select, dart_reference, DARTSelect, dart_reference_order),
    "divprune": Method(divprune_select, divprune_reference, DivPruneSelect, divprune_reference_order),
}
CASES = {"fastv": fastv_cases(), "dart": dart_cases(), "divprune": divprune_cases()}


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """The selections are hundreds of small ops: on a shared 2-core machine a second intra-op thread
    only adds synchronisation (measured under load: this file 245 s with 2 threads, 110 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", METHODS)
def test_case_count(method):
    assert len(CASES[method]) >= 200


@pytest.mark.parametrize(
    "method, case",
    [pytest.param(m, c, id=f"{m}-{c.name}") for m, cases in CASES.items() for c in cases],
)
def test_static_matches_reference(method, case):
    select, reference, module, reference_order = METHODS[method]
    indices = select(*case.inputs, case.keep)
    assert indices.dtype == torch.int64 and indices.shape == (case.keep,)
    assert torch.equal(indices, reference(*case.inputs, case.keep))
    assert torch.all(indices[1:] > indices[:-1])
    # The module's second output: the same tokens in the reference's selection order.
    ordered_indices, order = module(case.keep).ordered(*case.inputs)
    assert torch.equal(ordered_indices, indices)
    assert torch.equal(order, reference_order(*case.inputs, case.keep))


# --- The spec's rules on inputs whose answer is known ---------------------------------------------


def _identical_inputs(method: str, n: int = 30) -> tuple[torch.Tensor, ...]:
    if method == "fastv":
        return (torch.full((4, n), 0.01),)
    if method == "dart":
        return torch.ones(n, 8), torch.ones(n, 12), torch.ones(5, 8), torch.ones(5, 12)
    return (torch.ones(n, 12),)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("keep", [1, 4, 11, 29])
def test_identical_tokens_keep_the_lowest_indices(method, keep):
    inputs = _identical_inputs(method)
    for select in METHODS[method][:2]:
        assert select(*inputs, keep).tolist() == list(range(keep))


@pytest.mark.parametrize("method", METHODS)
def test_single_token(method):
    """N = 1 (DivPrune: the minimum over no other token is +inf)."""
    for select in METHODS[method][:2]:
        assert select(*_identical_inputs(method, n=1), 1).tolist() == [0]


def test_fastv_ranks_by_the_mean_over_heads():
    # Means 0.25, 0.25, 0.3125, 0.1875: token 2 first, then the tie 0 / 1 goes to 0.
    attention = torch.tensor([[0.5, 0.125, 0.375, 0.0], [0.0, 0.375, 0.25, 0.375]])
    for select in (fastv_select, fastv_reference):
        assert [select(attention, k).tolist() for k in (1, 2, 3)] == [[2], [0, 2], [0, 1, 2]]
    for order in (fastv_reference_order, lambda *args: FastVSelect(args[-1]).ordered(*args[:-1])[1]):
        assert order(attention, 3).tolist() == [2, 0, 1]  # by rank


def test_dart_budget_split():
    assert dart_budgets(3) == [0] * 8
    assert dart_budgets(4) == [0] * 8
    assert dart_budgets(5) == [1] + [0] * 7
    assert dart_budgets(11) == [1] * 7 + [0]
    assert dart_budgets(64) == [8] * 4 + [7] * 4
    assert all(sum(dart_budgets(r)) == r - min(4, r) for r in range(1, 600))


def test_dart_pivots_in_norm_order_take_their_least_similar_tokens():
    """Image pivots 7, 2, 9, 4 (by key L1 norm); pool token 11 is opposite to pivot 7, token 5 to
    pivot 2: the first pivot's budget takes 11, the second's 5. The text pivots are never kept."""
    keys = torch.ones(12, 6)
    for token, scale in ((7, 10.0), (2, 9.0), (9, 8.0), (4, 7.0)):
        keys[token] *= scale
    states = torch.ones(12, 6)
    states[7], states[11] = torch.eye(6)[0], -torch.eye(6)[0]
    states[2], states[5] = torch.eye(6)[1], -torch.eye(6)[1]
    text_keys, text_states = 100 * torch.ones(4, 6), torch.ones(4, 6)
    for select in (dart_select, dart_reference):
        assert select(keys, states, text_keys, text_states, 4).tolist() == [2, 4, 7, 9]
        assert select(keys, states, text_keys, text_states, 5).tolist() == [2, 4, 7, 9, 11]
        assert select(keys, states, text_keys, text_states, 6).tolist() == [2, 4, 5, 7, 9, 11]
    # Selection order: the image pivots by norm, then each pivot's picks.
    for order in (dart_reference_order, lambda *args: DARTSelect(args[-1]).ordered(*args[:-1])[1]):
        assert order(keys, states, text_keys, text_states, 6).tolist() == [7, 2, 9, 4, 11, 5]


def test_divprune_starts_with_the_most_isolated_token():
    embeds = torch.ones(10, 6) + 0.01 * torch.arange(60.0).reshape(10, 6)
    embeds[6] = -embeds[6]  # opposite to all the others: distance ~2
    for select in (divprune_select, divprune_reference):
        assert select(embeds, 1).tolist() == [6]


def test_divprune_zero_vector_is_at_distance_one_from_everything():
    """The zero token is the most isolated (1 against ~0); then every token is at distance 1 from
    it, and the tie goes to token 0."""
    embeds = torch.ones(10, 6) + 0.01 * torch.arange(60.0).reshape(10, 6)
    embeds[3] = 0
    for select in (divprune_select, divprune_reference):
        assert select(embeds, 1).tolist() == [3]
        assert select(embeds, 2).tolist() == [0, 3]
    for order in (divprune_reference_order, lambda embeds, keep: DivPruneSelect(keep).ordered(embeds)[1]):
        assert order(embeds, 2).tolist() == [3, 0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(method, dtype):
    """Decisions in float64 whatever the input dtype: the same tokens as the widened inputs."""
    case = next(c for c in CASES[method] if c.keep == 64)
    inputs = tuple(x.to(dtype) for x in case.inputs)
    indices = METHODS[method].select(*inputs, case.keep)
    assert indices.dtype == torch.int64
    assert torch.equal(indices, METHODS[method].reference(*(x.float() for x in inputs), case.keep))


# --- Input validation -----------------------------------------------------------------------------

ATTENTION = torch.full((4, 10), 0.05)
EMBEDS = torch.randn(10, 8)
IK, IS, TK, TS = torch.randn(10, 6), torch.randn(10, 8), torch.randn(5, 6), torch.randn(5, 8)


def _with_value(x: torch.Tensor, value: float) -> torch.Tensor:
    return x.clone().index_fill_(0, torch.tensor([1]), value)


BAD_INPUTS = [
    ("fastv", (ATTENTION[0], 3), r"attention must have shape \[heads, N\], got \(10,\)"),
    ("fastv", (ATTENTION[None], 3), r"attention must have shape \[heads, N\], got \(1, 4, 10\)"),
    ("fastv", (ATTENTION.long(), 3), r"attention must be a floating-point tensor"),
    ("fastv", (ATTENTION.tolist(), 3), r"attention must be a torch.Tensor, got list"),
    ("fastv", (ATTENTION, 0), r"keep must be an integer in \[1, N\] = \[1, 10\], got 0"),
    ("fastv", (ATTENTION, 11), r"keep must be an integer in \[1, N\] = \[1, 10\], got 11"),
    ("fastv", (ATTENTION, 2.0), r"keep must be an integer in \[1, N\]"),
    ("fastv", (_with_value(ATTENTION, math.nan), 3), r"attention contains NaN or infinite values"),
    ("dart", (IK, IS, TK[:3], TS[:3], 3), r"DART needs at least 4 text tokens after the image .*, got 3"),
    ("dart", (IK[None], IS, TK, TS, 3), r"image_keys must have shape \[N, dk\], got \(1, 10, 6\)"),
    ("dart", (IK, IS, TK, TS[0], 3), r"text_states must have shape \[M, d\], got \(8,\)"),
    ("dart", (IK, IS[:9], TK, TS, 3), r"image_keys has 10 tokens but image_states has 9"),
    ("dart", (IK, IS, TK, TS[:4], 3), r"text_keys has 5 tokens but text_states has 4"),
    ("dart", (IK, IS, TK[:, :5], TS, 3), r"image_keys has 6 features but text_keys has 5"),
    ("dart", (IK, IS, TK, TS[:, :7], 3), r"image_states has 8 features but text_states has 7"),
    ("dart", (IK, IS.half().int(), TK, TS, 3), r"image_states must be a floating-point tensor"),
    ("dart", (IK, IS, TK, TS, 11), r"keep must be an integer in \[1, N\] = \[1, 10\], got 11"),
    ("dart", (IK, IS, TK, _with_value(TS, math.inf), 3), r"text_states contains NaN or infinite values"),
    ("divprune", (EMBEDS[0], 3), r"embeds must have shape \[N, d\], got \(8,\)"),
    ("divprune", (EMBEDS, 0), r"keep must be an integer in \[1, N\] = \[1, 10\], got 0"),
    ("divprune", (EMBEDS, 11), r"keep must be an integer in \[1, N\] = \[1, 10\], got 11"),
    ("divprune", (EMBEDS, True), r"keep must be an integer in \[1, N\]"),
    ("divprune", (_with_value(EMBEDS, -math.inf), 3), r"embeds contains NaN or infinite values"),
]


@pytest.mark.parametrize("method, args, message", BAD_INPUTS, ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input(method, args, message):
    for select in METHODS[method][:2]:
        with pytest.raises(ValueError, match=message):
            select(*args)


@pytest.mark.parametrize("module", [FastVSelect, DARTSelect, DivPruneSelect])
@pytest.mark.parametrize("keep", [0, -1, 2.5, True])
def test_module_rejects_bad_keep(module, keep):
    with pytest.raises(ValueError, match=rf"keep must be an integer >= 1, got {keep!r}"):
        module(keep)


def test_module_rejects_keep_above_token_count():
    with pytest.raises(ValueError, match=r"keep must be an integer in \[1, N\] = \[1, 10\], got 12"):
        DivPruneSelect(12)(EMBEDS)


# --- Export: ONNX Runtime and ExecuTorch against eager at LLaVA-1.5-7B size ----------------------

EXPORT_KEEP = 64


@pytest.fixture(scope="module", params=list(METHODS))
def exported(request, tmp_path_factory):
    """One export per method (N = 576, width 4096, keep 64), run on every input kind (ties in all)."""
    method = request.param
    cases = real_size_cases(method, EXPORT_KEEP)
    module = Ordered(METHODS[method].module(EXPORT_KEEP)).eval()
    program = torch.export.export(module, cases[0].inputs, strict=False)
    folder = tmp_path_factory.mktemp(method)
    return {
        "method": method,
        "cases": cases,
        "onnx": save_onnx(program, folder / f"{method}.onnx"),
        "pte": save_pte(program, folder / f"{method}.pte"),
    }


def _eager(exported, case) -> list[torch.Tensor]:
    """[indices, order] of the static selector in eager."""
    method = METHODS[exported["method"]]
    indices, order = method.module(case.keep).ordered(*case.inputs)
    assert torch.equal(indices, method.select(*case.inputs, case.keep))
    return [indices, order]


def test_real_size_static_matches_reference(exported):
    method = METHODS[exported["method"]]
    for case in exported["cases"]:
        expected = [method.reference(*case.inputs, case.keep), method.reference_order(*case.inputs, case.keep)]
        assert all(map(torch.equal, _eager(exported, case), expected)), case.name


def test_onnx_runtime_matches_eager(exported):
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert [output.shape for output in session.get_outputs()] == [[EXPORT_KEEP]] * 2
    names = [i.name for i in session.get_inputs()]
    for case in exported["cases"]:
        outputs = session.run(None, dict(zip(names, (x.numpy() for x in case.inputs))))
        assert all(output.dtype == np.int64 for output in outputs)
        assert all(map(torch.equal, map(torch.from_numpy, outputs), _eager(exported, case))), case.name


def test_executorch_matches_eager(exported):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(exported["pte"]).load_method("forward")
    for case in exported["cases"]:
        outputs = method.execute(list(case.inputs))
        assert all(map(torch.equal, outputs, _eager(exported, case))), case.name
