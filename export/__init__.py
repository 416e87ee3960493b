"""Export registered models with VLM-Pruner inside the prefill graph to ONNX and ExecuTorch.

    python -m export --model tiny-llava --keep 64        # or: make export KEEP=64

Library: `ExportPipeline(ExportConfig(...)).run()` writes one artifact folder (export/ARTIFACTS.md).
"""

from export.config import Backend, ExportConfig
from export.pipeline import ExportPipeline

__all__ = ["Backend", "ExportConfig", "ExportPipeline"]
