"""A selector module's `ordered` as a graph to export."""

from __future__ import annotations

import torch
from torch import nn


class Ordered(nn.Module):
    """forward(*inputs) = select.ordered(*inputs): the module's outputs, then its selection order."""

    def __init__(self, select: nn.Module):
        super().__init__()
        self.select = select

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.select.ordered(*inputs)
