"""Hyperparameters of VLM-Pruner (spec section 7), validated once, shared by every implementation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Passes are unrolled into the exported graph; a config that needs more is a mistake.
MAX_PASSES = 64
# Tolerance of the fill rule's last finite threshold (spec section 4).
_FILL_TOLERANCE = 1e-9


@dataclass(frozen=True)
class VLMPrunerConfig:
    """VLM-Pruner hyperparameters, with the paper's defaults.

    Attributes:
        kappa: number of pivots (stage 1).
        q: number of highest-variance hidden channels kept for the similarity matrix.
        lam: weight of the spatial-distance factor in the BSS criterion.
        tau0: similarity threshold of the first greedy pass.
        tau_step: threshold increase per pass.
        block: number of candidates accepted in parallel per greedy step.
        beta: share of a kept token's own state after fusion.
    """

    kappa: int = 4
    q: int = 256
    lam: float = 0.5
    tau0: float = 0.8
    tau_step: float = 0.1
    block: int = 16
    beta: float = 0.3

    def __post_init__(self) -> None:
        for name in ("kappa", "q", "block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VLMPrunerConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("lam", "tau0", "tau_step", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"VLMPrunerConfig.{name} must be a finite number, got {value!r}")
        if self.lam < 0:
            raise ValueError(f"VLMPrunerConfig.lam must be >= 0, got {self.lam}")
        if self.tau_step <= 0:
            raise ValueError(f"VLMPrunerConfig.tau_step must be > 0, got {self.tau_step}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"VLMPrunerConfig.beta must be in [0, 1], got {self.beta}")
        passes = len(self.thresholds())
        if passes > MAX_PASSES:
            raise ValueError(
                f"tau0={self.tau0}, tau_step={self.tau_step} and lam={self.lam} give {passes} greedy "
                f"passes; at most {MAX_PASSES} are allowed (raise tau0 or tau_step)"
            )

    def thresholds(self) -> tuple[float, ...]:
        """The threshold of every greedy pass, last one +inf (the spec's fill rule).

        Finite thresholds tau0 + tau_step * t for t = 0, 1, ... while they stay <= 1 + lam: beyond
        that every candidate passes anyway. With the defaults: 0.8, 0.9, ..., 1.5, inf (9 passes).
        """
        ceiling = 1.0 + self.lam + _FILL_TOLERANCE
        finite = []
        t = 0
        while self.tau0 + self.tau_step * t <= ceiling and len(finite) <= MAX_PASSES:
            finite.append(self.tau0 + self.tau_step * t)
            t += 1
        return (*finite, math.inf)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)
