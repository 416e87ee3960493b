"""The ONNX Runtime path runs without torch: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from runtime.generate import GenerationConfig, Runner
from runtime.samples import sample_image
runner = Runner(sys.argv[1], "onnx")
result = runner.generate(sample_image(), "What is in the image?", GenerationConfig(max_new_tokens=3))
assert len(result.token_ids) == 3
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "transformers", "executorch"))
print(",".join(loaded))
"""


def test_onnx_runtime_path_imports_no_torch(artifact_dirs):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(artifact_dirs[64])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the ONNX Runtime path imported {done.stdout.strip()}"
