"""llama.cpp through llama-cpp-python: the checkpoint as a Q4_0 GGUF, run by the library's own eval and sampler.

    build: llama.cpp's convert_hf_to_gguf.py writes a Q8_0 GGUF (7B: 7.2 GB rather than f16's 13.5 GB),
           llama.cpp's quantizer requantizes it to Q4_0 (its own mix: output.weight in Q6_K), the Q8_0 goes;
           the versions, the tensor types and the library's CPU features go to WORK/anchor.json
    load:  `llama_cpp.Llama` on the Q4_0 file, CPU, `threads` threads (default: all the machine's),
           without llama.cpp's extra weight buffer types (`EXTRA_BUFFER_TYPES`), llama-cpp-python's
           defaults otherwise (the file memory-mapped, no flash attention)

Both tools are the ones the installed llama-cpp-python vendors: the wheel keeps only the library,
so `build` takes the converter, its modules and its gguf-py from the package's sdist of the same
version, which vendors the llama.cpp the library was built from.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.anchors.timing import RECORD, Generate, anchor_main, text_stats
from runtime.generate import Stats, ms_since

logger = logging.getLogger(__name__)

MODEL = "model-q4_0.gguf"
INTERMEDIATE = "q8_0"  # the converter's --outtype: 8 bits, requantized to Q4_0 by the quantizer
CONVERTER = ("convert_hf_to_gguf.py", "conversion", "gguf-py")  # under the sdist's vendor/llama.cpp/
CONTEXT = 1024  # tokens of KV cache: the bench's prompt (590) and new tokens (32), with room
BATCH = 512  # llama-cpp-python's n_batch and n_ubatch; llama.cpp's own tools take 2048 and 512
TAIL = 4000  # characters of a failed tool's output in the error
# llama.cpp's extra weight buffer types (its AMX and repacked-Q4_0 kernels; `--no-repack` turns them
# off in its CLI): with them, llama-cpp-python 0.3.36 built natively on this AMX machine segfaults in
# llama_decode at the first prompt (measured), so the anchor runs its plain Q4_0 CPU kernels.
EXTRA_BUFFER_TYPES = False
# The quantizer's log: one line per tensor ("type =   q8_0, converting to q4_0 .."), then the sizes.
TENSOR_LINE = re.compile(r"type =\s+(\w+)(?:, converting to (\w+))?")
QUANT_SIZE = re.compile(r"quant size\s+=\s+(.+)")
# A SentencePiece tokenizer for the converter (`_stage_checkpoint`): Llama's <unk> <s> </s> come first.
SENTENCES = (
    "What is shown in this image?",
    "A cat sits on a mat next to a red ball.",
    "The quick brown fox jumps over the lazy dog.",
)


def build(checkpoint: Path, work: Path) -> None:
    """`work`/model-q4_0.gguf from the Hugging Face checkpoint, with llama.cpp's converter and quantizer.

    Raises:
        RuntimeError: a step failed (its output's tail in the message).
    """
    staging = work.with_name(work.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tick = time.perf_counter()
    version = importlib.metadata.version("llama-cpp-python")
    converter = _converter(version, staging / "llama.cpp")
    model_dir = _stage_checkpoint(checkpoint, staging / "checkpoint")
    intermediate = staging / f"model-{INTERMEDIATE}.gguf"
    logger.info("converting %s to %s", checkpoint, intermediate)
    _run([sys.executable, str(converter), str(model_dir), "--outtype", INTERMEDIATE, "--outfile", str(intermediate)],
         "convert_hf_to_gguf.py")
    logger.info("quantizing to Q4_0 (%.0f s so far)", ms_since(tick) / 1000)
    log = _quantize(intermediate, staging / MODEL)
    intermediate.unlink()
    shutil.rmtree(converter.parent)
    shutil.rmtree(model_dir)
    record = {
        "llama_cpp_python": version,
        "convert": f"convert_hf_to_gguf.py --outtype {INTERMEDIATE}",
        "quantize": "llama_model_quantize LLAMA_FTYPE_MOSTLY_Q4_0, allow_requantize",
        "tensor_types": dict(Counter(target or source for source, target in TENSOR_LINE.findall(log))),
        "quant_size": QUANT_SIZE.search(log)[1],
        "system_info": _system_info(),
    }
    (staging / RECORD).write_text(json.dumps(record, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    staging.rename(work)
    logger.info("built %s in %.0f s: %s, %s", work / MODEL, ms_since(tick) / 1000,
                record["tensor_types"], record["quant_size"])


def load(work: Path, threads: int | None) -> Generate:
    """The Q4_0 model in llama.cpp, ready for greedy generations that ignore end of sequence."""
    from llama_cpp import Llama

    threads = threads or os.cpu_count()
    with _model_params(use_extra_bufts=EXTRA_BUFFER_TYPES):
        llm = Llama(
            model_path=str(work / MODEL), n_ctx=CONTEXT, n_batch=BATCH, n_ubatch=BATCH,
            n_threads=threads, n_threads_batch=threads, verbose=False,
        )

    def generate(prompt_ids: list[int], max_new_tokens: int) -> Stats:
        if len(prompt_ids) + max_new_tokens > CONTEXT:
            raise ValueError(f"{len(prompt_ids)} prompt and {max_new_tokens} new tokens overrun the context, {CONTEXT}")
        llm.reset()  # forget the last run's tokens: no prompt-cache reuse
        tick = time.perf_counter()
        llm.eval(prompt_ids)
        prefill_ms = ms_since(tick)
        tokens = [llm.sample(temp=0.0)]  # temperature 0: llama.cpp's greedy sampler (repeat penalty 1: none)
        first_token_ms = ms_since(tick)
        tick = time.perf_counter()
        while len(tokens) < max_new_tokens:
            llm.eval(tokens[-1:])
            tokens.append(llm.sample(temp=0.0))
        return text_stats(prefill_ms, first_token_ms, ms_since(tick), len(prompt_ids), len(tokens))

    return generate


@contextmanager
def _model_params(**fields: object) -> Iterator[None]:
    """`Llama` built from llama.cpp's default model parameters with `fields` changed: its constructor
    takes no argument for them."""
    from llama_cpp import llama_cpp as native

    default = native.llama_model_default_params

    def params():
        chosen = default()
        for name, value in fields.items():
            setattr(chosen, name, value)
        return chosen

    native.llama_model_default_params = params
    try:
        yield
    finally:
        native.llama_model_default_params = default


def _converter(version: str, folder: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its modules and gguf-py, from llama-cpp-python `version`'s sdist.

    `pip download` fetches the sdist (from pip's cache after the install) from the index that
    installed the library.
    """
    logger.info("fetching llama-cpp-python %s's sdist for llama.cpp's converter", version)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(folder),
          f"llama-cpp-python=={version}"], "pip download")
    (sdist,) = folder.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/")  # llama_cpp_python-<version>/vendor/llama.cpp/...
            if parts[1:3] == ["vendor", "llama.cpp"] and parts[3:4] and parts[3] in CONVERTER:
                member.name = "/".join(parts[3:])
                members.append(member)
        tar.extractall(folder, members=members, filter="data")
    sdist.unlink()
    return folder / CONVERTER[0]


def _stage_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """The checkpoint's files as links, and a small SentencePiece tokenizer.model next to them.

    LLaVA-1.5's tokenizer is Llama's SentencePiece model, which the converter reads from
    tokenizer.model (padding the vocabulary to the config's vocab_size). The synthetic tokenizer.json
    is byte-level BPE without byte fallback: the converter takes it for a GPT-2-style vocabulary and
    refuses its pre-tokenizer, whose hash it does not know ("BPE pre-tokenizer was not recognized",
    conversion/base.py get_vocab_base_pre). A SentencePiece model trained on three sentences takes
    the real one's place: the bench feeds token ids, so only the vocabulary's size matters.
    """
    import sentencepiece

    folder.mkdir()
    for path in checkpoint.iterdir():
        (folder / path.name).symlink_to(path.resolve())
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_writer=model, model_type="bpe", vocab_size=64,
        hard_vocab_limit=False, normalization_rule_name="identity", num_threads=1, minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return folder


def _quantize(source: Path, target: Path) -> str:
    """`source` requantized to Q4_0 by llama.cpp's quantizer, with its default mix for the type; its log."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True  # the source is Q8_0
    log: list[str] = []
    with _llama_log(log):
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if failed:
        raise RuntimeError(f"llama_model_quantize failed ({failed}):\n{''.join(log)[-TAIL:]}")
    return "".join(log)


def _system_info() -> str:
    """The CPU features the library was compiled for ("AVX512 = 1 | ..."): GGML_NATIVE builds for this machine's."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode().strip()


@contextmanager
def _llama_log(lines: list[str]) -> Iterator[None]:
    """llama.cpp's log into `lines` meanwhile; llama-cpp-python's own callback again afterwards."""
    import llama_cpp
    from llama_cpp._logger import llama_log_callback

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(llama_log_callback, ctypes.c_void_p(0))


def _run(command: list[str], what: str) -> None:
    """Run a tool; raise with the tail of its output if it fails."""
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stdout[-TAIL:]}")


if __name__ == "__main__":
    sys.exit(anchor_main(build, load))
