"""Answer one prompt about one image (or one video) with an artifact folder.

    python -m runtime ARTIFACT_DIR --image PHOTO.jpg --prompt "What is in the image?" [--backend onnx]
    python -m runtime ARTIFACT_DIR --video CLIP.mp4 --prompt "What happens?"   (a video model's artifact)

Exit status: 0 answered, 2 bad input or artifact, 3 internal error, 130 interrupted (`runtime.cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.artifact import load_artifact
from runtime.backends import BACKENDS
from runtime.cli import HelpFormatter, printable, run_cli
from runtime.families import host_family
from runtime.generate import GenerationConfig, Runner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("artifact_dir", type=Path, help="an artifact folder written by `python -m export`")
    visual = parser.add_mutually_exclusive_group(required=True)
    visual.add_argument("--image", type=Path, help="image file (any format PIL reads)")
    visual.add_argument(
        "--video", type=Path, help="video file (any format FFmpeg reads) or folder of frames, for a video model"
    )
    parser.add_argument("--prompt", required=True, help="the question about the image or video")
    parser.add_argument("--backend", choices=BACKENDS, default="onnx", help="runtime to run the graphs on")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="stop after this many generated tokens")
    parser.add_argument(
        "--allow-failed-parity", action="store_true", help="use an artifact whose export failed its parity check"
    )
    return parser


def answer(args: argparse.Namespace) -> int:
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    artifact = load_artifact(args.artifact_dir)
    # Before the graphs load (minutes at 7B): an image for a video model, or the reverse.
    kind, wanted = ("video" if args.video is not None else "image"), host_family(artifact.manifest).input_kind
    if kind != wanted:
        raise ValueError(f"this artifact answers about {wanted}s, not {kind}s: give --{wanted}")
    # One answer per process: opening the graphs one at a time costs no extra load and holds one
    # copy of the language model (`OnnxSession`).
    runner = Runner(artifact, args.backend, allow_failed_parity=args.allow_failed_parity, low_memory=True)
    parity = runner.artifact.parity_on(runner.backend)
    if parity != "passed":
        print(f"note: {describe_parity(parity)}", file=sys.stderr)
    _name_leftovers(args.artifact_dir)
    source = args.video if args.video is not None else args.image
    result = runner.generate(source, args.prompt, config, on_note=lambda note: print(f"note: {note}", file=sys.stderr))
    stats = result.stats
    print(printable(result.text))
    print(
        f"[{runner.backend}, keep {runner.artifact.keep}, {runner.artifact.method}, parity {parity}: "
        f"{len(result.token_ids)} tokens, vision {stats.vision_ms:.1f} ms, prefill {stats.prefill_ms:.1f} ms, "
        f"first token {stats.time_to_first_token_ms:.1f} ms, decode {stats.decode_tokens_per_s:.1f} tokens/s]",
        file=sys.stderr,
    )
    return 0


def describe_parity(status: str) -> str:
    """What an artifact's parity status means for its user."""
    return {
        "passed": "its export checked it against eager PyTorch: passed",
        "failed": "its export checked it against eager PyTorch and it FAILED; its outputs are not trustworthy",
        "skipped": "its export skipped the parity check (run `python -m runtime.parity` on it)",
        "interrupted": "its export was stopped before the parity check ended (run `python -m runtime.parity` on it)",
    }[status]


def _name_leftovers(artifact_dir: Path) -> None:
    """Say which staging folders killed exports left beside the artifact, and how to remove them."""
    from export.staging import clean_command, find_leftovers  # torch-free: the export's own staging rules

    model_dir = artifact_dir.resolve().parent
    leftovers = find_leftovers(model_dir)
    for leftover in leftovers:
        print(f"note: leftover {leftover.describe()}", file=sys.stderr)
    if leftovers:
        print(f"note: remove them with `{clean_command(model_dir.parent)}`", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), answer, argv)


if __name__ == "__main__":
    sys.exit(main())
