"""The artifacts a benchmark measures: where `python -m export` puts them, exported when missing.

Every value arrives as an argument: the Makefile passes its variables through the environment,
never as code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from runtime.cli import raise_for_exit_status
from runtime.contract import MANIFEST


def add_artifact_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `python -m export` flags that pick an artifact folder and how a missing one is made."""
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--quantize", help="as for `python -m export` (default: the model's)")
    parser.add_argument("--image-size", type=int, help="as for `python -m export` (default: the model's)")
    parser.add_argument("--frames", type=int, help="as for `python -m export` (default: the model's)")
    parser.add_argument("--quantize-vision", help="as for `python -m export` (default: none)")
    parser.add_argument("--onnx-profile", help="as for `python -m export` (default: exact)")
    parser.add_argument("--backends", help="as for `python -m export` (default: every one that fits)")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("artifacts"))
    return parser


def num_image_tokens(args: argparse.Namespace) -> int:
    """N of the model: the keep count of its unpruned artifact."""
    from models import get_spec  # imports torch: after the arguments are checked

    spec = get_spec(args.model)
    spec = spec if args.image_size is None else spec.with_image_size(args.image_size)
    return (spec if args.frames is None else spec.with_frames(args.frames)).num_image_tokens


def ensure_artifact(args: argparse.Namespace, keep: int, method: str | None = None) -> Path:
    """The artifact folder of `args.model` at `keep` with `method` (default the default method),
    exported in a child process (without the parity check: `make export` checks) when it holds no
    manifest."""
    from export.config import ExportConfig  # imports torch: after the arguments are checked
    from models.selectors import DEFAULT_METHOD

    method = method or DEFAULT_METHOD
    config = ExportConfig(
        model=args.model,
        keep=keep,
        method=method,
        quantization=args.quantize,
        **({"vision_quantization": args.quantize_vision} if args.quantize_vision else {}),
        image_size=args.image_size,
        frames=args.frames,
        output_dir=args.output_dir,
        **({"onnx_profile": args.onnx_profile} if args.onnx_profile else {}),
    )
    folder = config.artifact_dir
    if (folder / MANIFEST).is_file():
        return folder
    flags = ["--model", args.model, "-o", str(args.output_dir), "--keep", str(keep), "--method", method, "--skip-parity"]
    flags += ["--random-weights"] if args.random_weights else []
    flags += ["--quantize", args.quantize] if args.quantize else []
    flags += ["--quantize-vision", args.quantize_vision] if args.quantize_vision else []
    flags += ["--image-size", str(args.image_size)] if args.image_size else []
    flags += ["--frames", str(args.frames)] if args.frames else []
    flags += ["--onnx-profile", args.onnx_profile] if args.onnx_profile else []
    flags += ["--backends", args.backends] if args.backends else []
    print(f"{folder} is missing; exporting it: python -m export {' '.join(flags)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "export", *flags])
    raise_for_exit_status(done.returncode, f"exporting {folder} failed (exit {done.returncode}); see its message above")
    return folder
