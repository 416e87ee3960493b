"""Answer one prompt about one image with an artifact folder.

    python -m runtime ARTIFACT_DIR --image PHOTO.jpg --prompt "What is in the image?" [--backend onnx]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.backends import BACKENDS
from runtime.generate import GenerationConfig, Runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--backend", choices=BACKENDS, default="onnx")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        runner = Runner(args.artifact_dir, args.backend)
        result = runner.generate(args.image, args.prompt, GenerationConfig(max_new_tokens=args.max_new_tokens))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stats = result.stats
    print(result.text)
    print(
        f"[{runner.backend}, keep {runner.artifact.keep}: {len(result.token_ids)} tokens, "
        f"vision {stats.vision_ms:.1f} ms, prefill {stats.prefill_ms:.1f} ms, "
        f"first token {stats.time_to_first_token_ms:.1f} ms, decode {stats.decode_tokens_per_s:.1f} tokens/s]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
