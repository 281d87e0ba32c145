"""Throughput of the dynamic tokenizer on a real mixed corpus, in one run.

Compares (same directory, same documents):
  * the released InternS1Tokenizer (--interns1-py PATH: a release's `tokenization_interns1.py`, loaded with
    `from_pretrained` so the directory's added tokens count) — the Intern-S1-Pro file runs on its own folder, the
    Intern-S1 file on a directory built from the Pro release's Qwen3 base (or the bundled BPE) plus domain models
    trained on package data (that release's vocabulary and models are not public); --tokenizer DIR overrides;
  * our Python reference (DynamicTokenizer backend="python");
  * the C++ path (DynamicTokenizer backend="native", batch API, GIL released);
  * context: the plain base BPE (tiktoken) on the same text (base-only ids).
Checks that every implementation produces the ids of the first one (the released code when given) and prints
wall and CPU seconds (CPU: all threads of the process), MB/s and speed-ups.

    python bench/tokenizer.py [--repeat 3] [--threads 2] [--interns1-py ../shared/reference/intern-s1-pro/tokenization_interns1.py]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_s1.tokenizer import DynamicTokenizer, bundled_tokenizer_dir  # noqa: E402
from megatron_s1.tokenizer.testing import (build_test_directories, intern_s1_directory,  # noqa: E402
                                           load_released_tokenizer, mixed_corpus, release_base, release_corpus,
                                           released_generation)

# The released files: ../shared/reference beside the checkout (a worktree too, when ../shared is linked there) or
# $S1_REFERENCE, as tests/conftest.py finds them.
REFERENCE = os.environ.get("S1_REFERENCE", os.path.join(os.path.dirname(REPO), "shared", "reference"))
PRO_RELEASE = os.path.join(REFERENCE, "intern-s1-pro")


def environment() -> str:
    """Machine, load and library versions, printed with the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}, tiktoken "
            f"{v('tiktoken')}, sentencepiece {v('sentencepiece')}, transformers {v('transformers')}, "
            f"rdkit {v('rdkit')}")


def timed(fn, repeat):
    """(best wall seconds, CPU seconds of that run, result)."""
    best, out = (float("inf"), 0.0), None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best = min(best, (wall, cpu))
    return best[0], best[1], out


def released_setup(py_path: str, directory: str | None, root: str):
    """(released tokenizer, its directory, generation)."""
    if directory is None:
        own = os.path.dirname(os.path.abspath(py_path))
        if os.path.exists(os.path.join(own, "vocab.json")):
            directory = own
        else:  # the Intern-S1 file: build a directory of that generation
            base = bundled_tokenizer_dir()
            if os.path.exists(os.path.join(PRO_RELEASE, "vocab.json")):
                base = release_base(PRO_RELEASE, os.path.join(root, "qwen3-base"), below=151669)
            directory = intern_s1_directory(root, base)
    ref = load_released_tokenizer(py_path, directory)
    return ref, directory, released_generation(ref)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (best is reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for the C++ batch API")
    ap.add_argument("--docs", type=int, default=400, help="documents per kind in the corpus")
    ap.add_argument("--layout", default="s1", choices=["s1", "custom"],
                    help="test directory to use without --interns1-py")
    ap.add_argument("--interns1-py", default=None, help="a release's tokenization_interns1.py (the oracle)")
    ap.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer directory for --interns1-py")
    args = ap.parse_args()

    root = os.path.join(tempfile.gettempdir(), "megatron_s1_bench_tokdirs")
    rows = []
    if args.interns1_py:
        if not os.path.exists(args.interns1_py):
            print(f"error: --interns1-py {args.interns1_py!r} does not exist; pass a release's "
                  "tokenization_interns1.py", file=sys.stderr)
            return 2
        ref, directory, generation = released_setup(args.interns1_py, args.tokenizer, root)
        template = os.path.join(PRO_RELEASE, "chat_template.jinja")
        render = None
        if os.path.exists(template):
            with open(template, encoding="utf-8") as f:
                text = f.read()
            render = lambda m: ref.apply_chat_template(m, chat_template=text, tokenize=False,  # noqa: E731
                                                       add_generation_prompt=True)
        docs = release_corpus(generation, args.docs, render)
        rows.append((f"released InternS1Tokenizer ({generation})",
                     lambda: [ref.encode(d, add_special_tokens=False) for d in docs]))
        label = f"{generation}: {directory}"
    else:
        directory = build_test_directories(root)[args.layout]
        docs = mixed_corpus(args.docs)
        label = args.layout
    print(environment())
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"corpus: {len(docs)} documents, {mb:.2f} MB (prose, SMILES, protein, DNA/RNA, chat, tagged/untagged/"
          f"mixed); dir: {label}; threads: {args.threads}")

    native = DynamicTokenizer(directory, backend="native", on_unbalanced="ignore")
    python = DynamicTokenizer(directory, backend="python", on_unbalanced="ignore")
    rows.append(("our Python reference", lambda: [python.encode_python(d) for d in docs]))
    rows.append((f"C++ path (batch, {args.threads} threads)", lambda: native.encode_batch(docs, args.threads)))
    rows.append(("C++ path (batch, 1 thread)", lambda: native.encode_batch(docs, num_threads=1)))
    results = [(name, *timed(fn, args.repeat)) for name, fn in rows]
    base = python.base._encoding
    t_base, c_base, _ = timed(lambda: base.encode_ordinary_batch(docs, num_threads=args.threads), args.repeat)

    peer, peer_wall, peer_cpu, peer_ids = results[0]
    print(f"{'implementation':<40} {'wall s':>8} {'CPU s':>8} {'MB/s':>8} {'wall x':>8} {'CPU x':>8} {'same ids':>9}")
    ok = True
    for name, wall, cpu, ids in results:
        same = ids == peer_ids
        ok &= same
        print(f"{name:<40} {wall:>8.3f} {cpu:>8.3f} {mb / wall:>8.2f} {peer_wall / wall:>7.1f}x "
              f"{peer_cpu / max(cpu, 1e-9):>7.1f}x {str(same):>9}")
    print(f"{'(base BPE only, tiktoken)':<40} {t_base:>8.3f} {c_base:>8.3f} {mb / t_base:>8.2f}")
    print(f"speed-ups are against: {peer}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
