"""Export registered models with VLM-Pruner inside the prefill graph to ONNX and ExecuTorch.

    python -m export --model tiny-llava --keep 64        # or: make export KEEP=64

Library: `ExportPipeline(ExportConfig(...)).run()` writes one artifact folder (export/ARTIFACTS.md).
Importing the package imports no torch (`export.staging` and `export.options` need none); the
names below are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {"Backend": "export.options", "ExportConfig": "export.config", "ExportPipeline": "export.pipeline"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
