"""Throughput of the dynamic tokenizer on a real mixed corpus, in one run.

Compares (same directory, same documents):
  * transformers' InternS1Tokenizer — only when its source is available: pass --interns1-py PATH to the
    `tokenization_interns1.py` of an Intern-S1 model download (it is remote code; no PyPI package ships it);
  * our Python reference (DynamicTokenizer backend="python");
  * the C++ path (DynamicTokenizer backend="native", batch API, GIL released);
  * context: the plain base BPE (tiktoken) and HF `tokenizers` on the same text (base-only ids).
Checks that every implementation produces identical ids and prints MB/s and ratios.

    python bench/tokenizer.py [--repeat 3] [--threads 2] [--interns1-py tokenization_interns1.py]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_s1.tokenizer import DynamicTokenizer, bundled_tokenizer_dir  # noqa: E402
from megatron_s1.tokenizer.testing import build_test_directories, mixed_corpus  # noqa: E402


def timed(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def load_interns1(path: str, directory: str):
    spec = importlib.util.spec_from_file_location("tokenization_interns1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InternS1Tokenizer(vocab_file=os.path.join(directory, "vocab.json"),
                                    merges_file=os.path.join(directory, "merges.txt"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (best is reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for the C++ batch API")
    ap.add_argument("--docs", type=int, default=400, help="documents per kind in the mixed corpus")
    ap.add_argument("--layout", default="s1", choices=["s1", "custom"], help="test directory to use")
    ap.add_argument("--interns1-py", default=None, help="path to tokenization_interns1.py (remote code)")
    args = ap.parse_args()

    root = os.path.join(tempfile.gettempdir(), "megatron_s1_bench_tokdirs")
    directory = build_test_directories(root)[args.layout]
    docs = mixed_corpus(args.docs)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"corpus: {len(docs)} documents, {mb:.2f} MB (prose, SMILES, protein, DNA, mixed tagged/untagged); "
          f"dir: {args.layout}; threads: {args.threads}")

    native = DynamicTokenizer(directory, backend="native", on_unbalanced="ignore")
    ref = DynamicTokenizer(directory, backend="python", on_unbalanced="ignore")
    rows = []
    t_ref, ids_ref = timed(lambda: [ref.encode_python(d) for d in docs], args.repeat)
    rows.append(("Python reference", t_ref, True))
    if args.interns1_py:
        hf = load_interns1(args.interns1_py, directory)
        t_hf, ids_hf = timed(lambda: [hf.encode(d, add_special_tokens=False) for d in docs], 1)
        rows.insert(0, ("transformers InternS1Tokenizer", t_hf, ids_hf == ids_ref))
    t_nat, ids_nat = timed(lambda: native.encode_batch(docs, num_threads=args.threads), args.repeat)
    rows.append((f"C++ path (batch, {args.threads} threads)", t_nat, ids_nat == ids_ref))
    t_nat1, ids_nat1 = timed(lambda: native.encode_batch(docs, num_threads=1), args.repeat)
    rows.append(("C++ path (batch, 1 thread)", t_nat1, ids_nat1 == ids_ref))
    base = ref.base._encoding
    t_base, _ = timed(lambda: base.encode_ordinary_batch(docs, num_threads=args.threads), args.repeat)
    from tokenizers import Tokenizer
    hf_fast = Tokenizer.from_file(os.path.join(bundled_tokenizer_dir(), "tokenizer.json"))
    t_fast, _ = timed(lambda: hf_fast.encode_batch(docs), args.repeat)

    peer_name, peer_time = rows[0][0], rows[0][1]
    print(f"{'implementation':<34} {'seconds':>8} {'MB/s':>8} {'speed-up vs ' + peer_name[:20]:>34} {'same ids':>9}")
    for name, t, same in rows:
        print(f"{name:<34} {t:>8.3f} {mb / t:>8.2f} {peer_time / t:>33.1f}x {str(same):>9}")
    print(f"{'(base BPE only) tiktoken':<34} {t_base:>8.3f} {mb / t_base:>8.2f}")
    print(f"{'(base BPE only) HF tokenizers':<34} {t_fast:>8.3f} {mb / t_fast:>8.2f}")
    if not args.interns1_py:
        print("note: transformers' InternS1Tokenizer not measured (remote code, not installable here; "
              "pass --interns1-py PATH)")
    return 0 if all(same for _, _, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
