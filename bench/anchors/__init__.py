"""The runtimes a user would otherwise pick, run on the same language model as our artifacts (`make bench-anchors`).

Each anchor is one module here with two jobs, run in its own interpreter (`bench.anchors.environment`
makes a virtual environment for an anchor whose packages are not ours):

    python -m bench.anchors.<anchor> build   --checkpoint DIR --work DIR
    python -m bench.anchors.<anchor> measure --work DIR --prompt-tokens T --max-new-tokens K [--runs R] [--warmup W]

`build` turns the Hugging Face checkpoint that `bench.anchors.checkpoint` writes (LLaVA's Llama
decoder, random weights) into the anchor's own int4 artifact with the anchor's own tools; `measure`
loads it, generates greedily from T fixed token ids with the anchor's own generator (end of
sequence ignored) and prints one JSON object (`bench.anchors.timing`). `bench.anchors.__main__`
runs them next to our artifacts and prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Anchor:
    """One runtime to compare with: its module here, its name in tables, the backend of ours it is
    the alternative to (None: ours has none of its kind) and the packages it needs beyond ours."""

    module: str
    label: str
    family: str | None
    requirements: tuple[str, ...] = ()


ANCHORS = {
    "onnxruntime_genai": Anchor(
        "bench.anchors.onnxruntime_genai", "ONNX Runtime GenAI", "onnx", ("onnxruntime-genai==0.18.0",)
    ),
    "executorch_llama": Anchor("bench.anchors.executorch_llama", "ExecuTorch Llama", "executorch"),
    # No gguf pin: llama.cpp's converter imports the gguf-py it vendors (bench.anchors.llama_cpp).
    "llama_cpp": Anchor("bench.anchors.llama_cpp", "llama.cpp", None, ("llama-cpp-python==0.3.36",)),
}
