"""What every command-line entry point shares: exit codes, one-line errors, `--debug`, interrupts.

    0    success
    1    a parity check ran and is out of tolerance
    2    bad input, a bad artifact or a bad environment (missing file, full disk, no memory): one
         line on stderr says which
    3    internal error (a bug): one line; `--debug` shows the traceback
    130  interrupted (Ctrl-C, SIGTERM, SIGHUP): cleaned up, nothing half-written left behind

No traceback reaches the user unless `--debug` is given; third-party warnings and log lines stay
hidden unless `--verbose` is given. Torch-free: the ONNX Runtime path uses it too.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

EXIT_OK = 0
EXIT_PARITY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

# Where the benchmarks write their JSON reports by default.
RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench" / "results"
# The project's own loggers; every other logger is third-party.
PROJECT_LOGGERS = ("export", "runtime", "models", "bench")
# Errors that describe the input, the artifact or the machine, not a bug of ours.
USER_ERRORS = (ValueError, OSError, MemoryError, ImportError)

_interrupted = False
_quiet = False  # third-party output hidden (no --verbose), see `native_output_hidden`
# The signals every CLI turns into KeyboardInterrupt (and the export defers while it swaps folders).
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that the same clean-up runs."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, unless the flag has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def write_report(report: dict[str, Any], path: Path) -> None:
    """A command's report as JSON at `path` (its folders made), said on stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


def add_common_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--verbose", action="store_true", help="show third-party warnings and log lines")
    return parser


def run_cli(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
    *,
    log_stream: TextIO | None = None,
) -> int:
    """Parse `argv` with `parser` (given `--debug` and `--verbose` here), run `body(args)`, and turn
    every way it can fail into one line on stderr and the documented exit code.

    Args:
        log_stream: where the project's INFO log lines go (default stderr).
    """
    global _interrupted
    _interrupted = False
    args = add_common_flags(parser).parse_args(argv)
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in INTERRUPT_SIGNALS}
    # Restored afterwards: a CLI called in-process (tests) leaves the caller's logging as it was.
    with warnings.catch_warnings(), output_configured(verbose=args.verbose, stream=log_stream or sys.stderr):
        try:
            return body(args)
        except KeyboardInterrupt:
            return _fail(args, "interrupted", EXIT_INTERRUPTED)
        except USER_ERRORS as error:
            return _fail(args, f"error: {describe_error(error)}", EXIT_BAD_INPUT)
        except Exception as error:  # anything else is ours to fix: say so, trace only on request
            if _interrupted:  # a library turned the interrupt into another exception
                return _fail(args, "interrupted", EXIT_INTERRUPTED)
            message = f"error: internal error ({type(error).__name__}: {error}); rerun with --debug for the traceback"
            return _fail(args, message, EXIT_INTERNAL)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def describe_error(error: BaseException) -> str:
    """One line for the user: the message, and for OS errors what failed where."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" while writing {error.filename}" if error.filename else ""
        return f"no space left on the disk{where}; free some space and run again"
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    if isinstance(error, MemoryError) and not str(error):
        return "out of memory"
    return " ".join(str(error).split()) or type(error).__name__


def raise_for_exit_status(status: int, failure: str) -> None:
    """Re-raise in this process what a child CLI's exit `status` means (0: nothing): 130 as an
    interrupt, 2 as bad input (ValueError), anything else as an internal error; `failure` says what failed."""
    if status == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    if status == EXIT_BAD_INPUT:
        raise ValueError(failure)
    if status != EXIT_OK:
        raise RuntimeError(failure)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if an interrupt arrived, even one that library code swallowed
    (measured: Ctrl-C during torch.export was lost once in four tries). Call between stages."""
    if _interrupted:
        raise KeyboardInterrupt


def printable(text: str) -> str:
    """`text` with control characters escaped (newlines and tabs kept): model output may hold
    terminal escape sequences that must not reach a terminal raw."""
    return "".join(ch if ch in "\n\t" or ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _raise_interrupted(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(signal.Signals(signum).name)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(message, file=sys.stderr)
    return code


def is_verbose() -> bool:
    """Whether third-party output shows (--verbose, or no CLI configured it)."""
    return not _quiet


def import_torch_quietly() -> None:
    """Import torch and transformers, then hide their warnings and progress bars again unless the CLI
    runs with --verbose: both set their loggers' levels when imported, after `run_cli` quieted them.
    Call it before the first torch-importing work of a CLI."""
    import torch
    import transformers

    if _quiet:
        torch._logging.set_logs(all=logging.ERROR)
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


@contextmanager
def native_output_hidden() -> Iterator[None]:
    """Silence what native code prints on stderr (ExecuTorch's cpuinfo lines at load) unless the
    CLI runs with --verbose; the exceptions it raises still carry their messages."""
    if not _quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def output_configured(*, verbose: bool, stream: TextIO) -> Iterator[None]:
    """The project's INFO lines on `stream`; third-party logs only with --verbose (warnings are
    silenced by the caller, inside `warnings.catch_warnings`). Every logger is restored on exit."""
    global _quiet
    third_party = ("", "torch", "onnxscript", "executorch", "transformers", "torchao")
    loggers = [logging.getLogger(name) for name in (*PROJECT_LOGGERS, *third_party)]
    saved = [(lg, lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    for name in PROJECT_LOGGERS:
        project_logger = logging.getLogger(name)
        project_logger.setLevel(logging.INFO)
        project_logger.handlers[:] = [handler]
        # Imported libraries configure the root logger (ExecuTorch at import): do not print twice.
        project_logger.propagate = False
    _quiet = not verbose
    if not verbose:
        os.environ.setdefault("TORCH_LOGS", "-all")  # read when torch is first imported
        warnings.simplefilter("ignore")
        for name in third_party:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        _quiet = False
        for lg, level, handlers, propagate in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
