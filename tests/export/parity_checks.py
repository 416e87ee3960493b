"""Assertions on a parity report (`runtime.parity.ParityReport`) shared by the export tests."""

from __future__ import annotations

from runtime.parity import ParityReport


def assert_exact_parity(report: ParityReport, backends: tuple[str, ...], steps: int) -> None:
    """A `runtime.parity.ParityReport` that passed with exact parity on `backends`, in that order:
    kept indices and `steps` greedy tokens identical, logits within the tolerance."""
    assert [result.backend for result in report.backends] == list(backends)
    for result in report.backends:
        assert result.exact and result.kept_indices_equal and result.tokens_equal, result
        assert len(result.tokens) == steps
        assert result.logits_max_abs <= result.tolerance
    assert report.input_ids_equal and report.pixel_values_max_abs == 0.0
    assert report.passed
