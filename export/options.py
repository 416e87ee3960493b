"""The choices and defaults of an export, torch-free: `python -m export` parses its flags before it
imports torch (seconds), so that --help and usage errors answer at once.

`MODEL_NAMES`, `METHOD_NAMES` and `QUANTIZATIONS` name what `models.MODEL_SPECS`,
`models.selectors.method_names()` and `models.quantize.Quantization` define (all import torch);
tests/export/test_cli.py checks that they agree.
"""

from __future__ import annotations

from enum import Enum

MODEL_NAMES = (
    "llava-1.5-13b",
    "llava-1.5-7b",
    "llava-1.5-7b-3layers",
    "llava-next-7b",
    "llava-video-7b",
    "qwen2-vl-7b",
    "qwen2-vl-7b-3layers",
    "tiny-llava",
    "tiny-llava-next",
    "tiny-llava-video",
    "tiny-qwen2-vl",
)
# The default first.
METHOD_NAMES = ("vlm-pruner", "dart", "divprune", "fastv")
QUANTIZATIONS = ("none", "int4", "int8")
DEFAULT_MODEL = "tiny-llava"
# The paper's headline pruning rate: 64 of LLaVA-1.5's 576 image tokens kept.
DEFAULT_RATE = 0.889
# Longest prompt + answer the graphs accept unless told otherwise. ExecuTorch plans memory for
# the upper bound, and prefill's attention scores grow with its square.
DEFAULT_MAX_SEQ_LEN = 2048
# Text tokens (prompt and answer) an image of many tokens leaves room for by default.
DEFAULT_TEXT_ROOM = 1024


class Backend(str, Enum):
    """Where the graphs go: ONNX files for ONNX Runtime, or one .pte for the ExecuTorch runtime."""

    ONNX = "onnx"
    EXECUTORCH = "executorch"
