"""The bad-input suite: the real CLIs (`python -m runtime`, `runtime.parity`, `runtime.bench`) on
hostile and broken inputs, one case a line: what is done to the input, the exit code, words of the
message (`runtime.cli`: 0 ok, 1 parity out of tolerance, 2 bad input or artifact, 130 interrupted).

Each case runs in a child process under a memory limit, so that a memory bomb that regresses fails
its test instead of taking the machine down. Artifact cases run on both backends.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.manifest import file_entries, read_manifest, write_manifest
from runtime.contract import TOKENIZER_FILE
from tests.export.fixtures import REPO
from tests.runtime.test_images import bilevel_png

# Address space of a child: a runtime needs well under this; the image bombs asked for 4.5 and
# 23.5 GB before they were bounded.
MEMORY_LIMIT = {"onnx": 3 << 30, "executorch": 8 << 30}
PROMPT = "What is in the image?"


@dataclass(frozen=True)
class Case:
    """One bad input: `make(folder, tmp)` damages a copy of the keep-64 artifact (or writes an
    image) and returns the CLI arguments after the artifact folder."""

    name: str
    make: Callable[[Path, Path], list[str]]
    exit_code: int
    words: str


def _edit_manifest(edit: Callable[[dict], None]) -> Callable[[Path, Path], list[str]]:
    def make(folder: Path, tmp: Path) -> list[str]:
        manifest = read_manifest(folder)
        edit(manifest)
        write_manifest(folder, manifest)
        return []

    return make


def _set(section: str, key: str, value) -> Callable[[Path, Path], list[str]]:
    return _edit_manifest(lambda manifest: manifest[section].__setitem__(key, value))


def _rehash(folder: Path) -> None:
    """Make the manifest's sums match the folder again: an attacker can edit both."""
    manifest = read_manifest(folder)
    manifest["files"] = file_entries(folder)
    write_manifest(folder, manifest)


def _flip_byte(relative: str) -> Callable[[Path, Path], list[str]]:
    def make(folder: Path, tmp: Path) -> list[str]:
        path = folder / relative
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        return []

    return make


def _truncate(folder: Path, tmp: Path) -> list[str]:
    path = folder / TOKENIZER_FILE
    path.write_bytes(path.read_bytes()[:100])
    return []


def _remove(folder: Path, tmp: Path) -> list[str]:
    (folder / TOKENIZER_FILE).unlink()
    return []


def _link_outside(folder: Path, tmp: Path) -> list[str]:
    """tokenizer.json a symlink to an identical file outside the artifact, sums matching."""
    outside = tmp / "elsewhere.json"
    shutil.copy(folder / TOKENIZER_FILE, outside)
    (folder / TOKENIZER_FILE).unlink()
    (folder / TOKENIZER_FILE).symlink_to(outside)
    return []


def _extra_link(folder: Path, tmp: Path) -> list[str]:
    (folder / "processor" / "passwd").symlink_to("/etc/passwd")
    return []


def _garbage_tokenizer(folder: Path, tmp: Path) -> list[str]:
    (folder / TOKENIZER_FILE).write_text('{"version": "1.0", "model": 42}')
    _rehash(folder)
    return []


def _image(make_image: Callable[[Path], Path]) -> Callable[[Path, Path], list[str]]:
    def make(folder: Path, tmp: Path) -> list[str]:
        return ["--image", str(make_image(tmp))]

    return make


def _png(width: int, height: int) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / f"{width}x{height}.png"
        bilevel_png(path, width, height)
        return path

    return write


def _file(content: bytes, name: str = "image.png") -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        (tmp / name).write_bytes(content)
        return tmp / name

    return write


def _args(*argv: str) -> Callable[[Path, Path], list[str]]:
    return lambda folder, tmp: list(argv)


def _missing_folder(folder: Path, tmp: Path) -> list[str]:
    shutil.rmtree(folder)
    return []


def _file_as_folder(folder: Path, tmp: Path) -> list[str]:
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    return []


def _leftover(folder: Path, tmp: Path) -> list[str]:
    """A staging folder beside the artifact, as a SIGKILLed export leaves it."""
    (folder.parent / ".artifact-0123abcd").mkdir()
    (folder.parent / ".artifact-0123abcd" / "weights.data").write_bytes(bytes(1000))
    return []


def _parity(status: str) -> Callable[[Path, Path], list[str]]:
    return _edit_manifest(lambda manifest: manifest.__setitem__("parity", {"status": status}))


def _failed_parity(*argv: str) -> Callable[[Path, Path], list[str]]:
    def make(folder: Path, tmp: Path) -> list[str]:
        _parity("failed")(folder, tmp)
        return list(argv)

    return make


# The runtime CLI, `python -m runtime FOLDER --image sample.png --prompt PROMPT [case args]`; a
# case's --image or --prompt replaces the default one.
RUNTIME_CASES = [
    Case("works", _args(), 0, "parity skipped"),
    Case("parity interrupted: used, and said", _parity("pending"), 0, "stopped before the parity check ended"),
    Case("parity failed: refused", _parity("failed"), 2, "failed its parity check"),
    Case("parity failed, insisted", _failed_parity("--allow-failed-parity"), 0, "FAILED"),
    Case("leftover of a killed export: named", _leftover, 0, "left by a killed export of artifact"),
    Case("no folder", _missing_folder, 2, "does not exist"),
    Case("a file as the folder", _file_as_folder, 2, "is a file"),
    Case("manifest not JSON", lambda f, t: [(f / "manifest.json").write_text("{oops"), []][1], 2, "not valid JSON"),
    Case("another format version", _edit_manifest(lambda m: m.__setitem__("format_version", 2)), 2, "format_version 2"),
    Case("corrupted weights", _flip_byte("onnx/weights.data"), 2, "corrupted"),
    Case("corrupted .pte", _flip_byte("executorch/model.pte"), 2, "corrupted"),
    Case("truncated tokenizer", _truncate, 2, "corrupted"),
    Case("missing tokenizer", _remove, 2, "missing"),
    Case("file entry leaving the folder", _edit_manifest(lambda m: m["files"].__setitem__("../x", m["files"][TOKENIZER_FILE])), 2, "not a path inside"),
    Case("tokenizer symlinked outside", _link_outside, 2, "symbolic link"),
    Case("extra symlink leaving the folder", _extra_link, 2, "symbolic link"),
    Case("tokenizer that does not parse", _garbage_tokenizer, 2, "not a tokenizer"),
    Case("manifest keep edited", _set("pruning", "keep", 128), 2, "keep: manifest 128, graphs 64"),
    Case("manifest max_seq_len edited", _set("text", "max_seq_len", 4096), 2, "max_seq_len: manifest 4096, graphs 2048"),
    Case("manifest vocab edited", _set("text", "vocab_size", 7), 2, "vocab_size: manifest 7"),
    Case("manifest pruning layer edited", _set("pruning", "prune_layer", 1), 2, "prune_layer: manifest 1, graphs 2"),
    Case("manifest field missing", _edit_manifest(lambda m: m["text"].pop("vocab_size")), 2, "misses the field text.vocab_size"),
    Case("no image file", _args("--image", "/nonexistent/photo.jpg"), 2, "does not exist"),
    Case("a folder as the image", _image(lambda tmp: tmp), 2, "is a folder"),
    Case("not an image", _image(_file(b"hello, world")), 2, "cannot read image"),
    Case("empty image file", _image(_file(b"")), 2, "is empty"),
    Case("memory bomb 1 x 30000", _image(_png(1, 30000)), 2, "too elongated: 1 x 30000 pixels"),
    Case("memory bomb 1 x 4000", _image(_png(1, 4000)), 2, "too elongated: 1 x 4000 pixels"),
    Case("memory bomb 30000 x 30000", _image(_png(30000, 30000)), 2, "too large"),
    Case("empty prompt", _args("--prompt", "   "), 2, "prompt is empty"),
    Case("prompt with the image token", _args("--prompt", "look: <image>"), 2, "must not contain <image>"),
    Case("prompt past the context", _args("--prompt", "word " * 3000), 2, "exceeds the artifact's 2048 positions"),
    Case("no new tokens", _args("--max-new-tokens", "0"), 2, "max_new_tokens must be an integer >= 1"),
]


@pytest.fixture
def run_case(artifact_dirs, tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """(case, backend, module) -> the finished child, on a fresh copy of the keep-64 artifact."""

    def run(case: Case, backend: str, module: str = "runtime") -> subprocess.CompletedProcess:
        folder = tmp_path / "artifact"
        shutil.copytree(artifact_dirs[64], folder)
        image = tmp_path / "sample.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(image)
        extra = case.make(folder, tmp_path)
        argv = [str(folder)]
        if module == "runtime":
            defaults = {"--image": str(image), "--prompt": PROMPT, "--backend": backend}
            argv += [item for flag, value in defaults.items() if flag not in extra for item in (flag, value)]
        else:
            argv += ["--backends", backend]
        return run_cli(module, [*argv, *extra], memory=MEMORY_LIMIT[backend])

    return run


def run_cli(module: str, argv: list[str], *, memory: int, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m module argv` in a child limited to `memory` bytes of address space."""
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # noqa: E731
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        preexec_fn=limit,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def check(done: subprocess.CompletedProcess, case: Case) -> None:
    said = done.stdout + done.stderr
    assert done.returncode == case.exit_code, f"{case.name}: exit {done.returncode}, expected {case.exit_code}:\n{said}"
    assert case.words in said, f"{case.name}: {case.words!r} not in:\n{said}"
    assert "Traceback" not in said, f"{case.name}: a traceback reached the user:\n{said}"
    if case.exit_code:
        assert "error: " in said.strip().splitlines()[-1], f"{case.name}: the last line is not the error"


@pytest.mark.parametrize("case", RUNTIME_CASES, ids=lambda case: case.name)
def test_runtime_onnx(run_case, case):
    if case.name == "corrupted .pte":
        pytest.skip("ONNX Runtime reads no .pte")  # an artifact file the case's backend does not read
    check(run_case(case, "onnx"), case)


# The cases whose handling depends on the backend (the graphs it loads, its inputs).
EXECUTORCH_CASES = {"works", "corrupted .pte", "manifest keep edited", "manifest max_seq_len edited",
                    "manifest vocab edited", "manifest pruning layer edited", "prompt past the context",
                    "parity failed: refused"}


@pytest.mark.parametrize("case", [c for c in RUNTIME_CASES if c.name in EXECUTORCH_CASES], ids=lambda c: c.name)
def test_runtime_executorch(run_case, case):
    check(run_case(case, "executorch"), case)


PARITY_CASES = [
    Case("steps past the context, refused before eager runs", _args("--steps", "3000"), 2, "exceeds the artifact's"),
    Case("no folder", _missing_folder, 2, "does not exist"),
    Case("unknown backend", _args("--backends", "tensorrt"), 2, "invalid choice"),
]


@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda case: case.name)
def test_parity_cli(run_case, case):
    check(run_case(case, "onnx", module="runtime.parity"), case)


@pytest.mark.parametrize("occupied", [False, True], ids=["new path", "folder with a recipe stamp"])
def test_parity_writes_nothing_where_the_manifest_points(artifact_dirs, tmp_path, occupied):
    """A random-weight reference is rebuilt in the project's cache, never at the manifest's path,
    and nothing is deleted there."""
    folder = tmp_path / "artifact"
    shutil.copytree(artifact_dirs[64], folder)
    target = tmp_path / "victim"
    if occupied:
        target.mkdir()
        (target / "tiny_llava_recipe.json").write_text("{}")
        (target / "precious.txt").write_text("keep me")
    _set("model", "checkpoint", str(target))(folder, tmp_path)
    before = sorted(p.name for p in target.iterdir()) if occupied else None
    done = run_cli("runtime.parity", [str(folder), "--backends", "onnx", "--steps", "2"], memory=8 << 30)
    assert done.returncode == 0, done.stderr
    if occupied:
        assert sorted(p.name for p in target.iterdir()) == before
    else:
        assert not target.exists()


def test_bench_reports_a_child_failure_in_one_line(run_case):
    case = Case("bench of a failed-parity artifact", _parity("failed"), 2, "failed its parity check")
    check(run_case(case, "onnx", module="runtime.bench"), case)


@pytest.mark.parametrize(
    ("target", "variable"),
    [
        ("export", "MODEL"),
        ("export", "KEEP"),
        ("export", "QUANTIZE"),
        ("export", "METHOD"),
        ("bench", "MODEL"),
        ("bench", "BENCH_KEEPS"),
        ("bench", "METHOD"),
        ("bench-select", "METHOD"),
        ("bench-select", "SIZES"),
    ],
)
def test_make_variables_are_arguments_not_code(tmp_path, target, variable):
    """A make variable holding shell or Python code is passed as one argument and refused."""
    pwned = tmp_path / "pwned"
    for value in (f"tiny-llava' if open('{pwned}','w') else '", f"x; touch {pwned}", f"`touch {pwned}`"):
        # Its own process group, so that a regression that starts a real export is stopped whole.
        with subprocess.Popen(
            ["make", "-s", "-C", str(REPO), target, f"{variable}={value}", "BENCH_FLAGS=--runs 1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as child:
            try:
                stdout, stderr = child.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                raise
        assert not pwned.exists(), f"{variable}={value!r} ran as code"
        # Refused by the command itself (argparse or runtime.cli), not by make or the shell, and for
        # this variable's value: not for another argument the target failed to pass.
        refusal = re.search(r"^(python -m \S+: )?error: .*", stderr, re.M)
        assert child.returncode != 0 and refusal, stdout + stderr
        assert variable.lower().removeprefix("bench_") in refusal.group(), refusal.group()
