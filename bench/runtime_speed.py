"""`make bench`: export what is missing, then time pruned artifacts against the unpruned one.

    python -m bench.runtime_speed --model MODEL --keeps 64 128 192 [--methods vlm-pruner fastv dart]
        [--baseline 576] [--random-weights] [--quantize int4] [--backends onnx,executorch] [-o artifacts]
        [-- BENCH FLAGS]

Every method at every keep, side by side, against one baseline (the default method's artifact at
keep N, i.e. unpruned, unless told). Each artifact folder is the one `python -m export` writes; a missing one is exported first
(`bench.artifacts`). The flags after `--` go to `runtime.bench` (e.g. `--runs 1 --max-new-tokens 8`
at 7B).
"""

from __future__ import annotations

import argparse
import sys

from bench.artifacts import add_artifact_flags, ensure_artifact, num_image_tokens
from export.options import METHOD_NAMES
from runtime.cli import HelpFormatter, import_torch_quietly, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.runtime_speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    add_artifact_flags(parser)
    parser.add_argument("--keeps", type=int, nargs="+", default=[64, 128, 192], help="pruned keep counts")
    parser.add_argument(
        "--methods", nargs="+", choices=METHOD_NAMES, default=[METHOD_NAMES[0]], help="selection methods, side by side"
    )
    parser.add_argument("--baseline", type=int, help="keep count of the baseline (default N: unpruned)")
    parser.add_argument("bench_flags", nargs=argparse.REMAINDER, help="after --: flags of runtime.bench")
    return parser


def run(args: argparse.Namespace) -> int:
    import_torch_quietly()
    pruned = [ensure_artifact(args, keep, method) for method in args.methods for keep in args.keeps]
    baseline = ensure_artifact(args, args.baseline or num_image_tokens(args))
    from runtime.bench import main as bench_main

    flags = [flag for flag in args.bench_flags if flag != "--"]
    return bench_main([*map(str, pruned), "--baseline", str(baseline), *flags])


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
