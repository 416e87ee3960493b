"""Run exported artifacts (`export/ARTIFACTS.md`) on ONNX Runtime or the ExecuTorch runtime.

Importing this package, and running the ONNX Runtime backend, needs numpy, onnxruntime,
tokenizers and pillow only; torch is imported by the ExecuTorch backend and by `runtime.parity`.
"""

from runtime.artifact import Artifact, ArtifactError, load_artifact
from runtime.generate import GenerationConfig, GenerationResult, Runner, Stats

__all__ = ["Artifact", "ArtifactError", "GenerationConfig", "GenerationResult", "Runner", "Stats", "load_artifact"]
