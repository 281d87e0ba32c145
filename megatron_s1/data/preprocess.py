"""jsonl -> Megatron IndexedDataset (.bin/.idx), tokenised in parallel worker processes.

Each input line is a JSON object; the text is read from `--json-key` (default "text") and one
end-of-document token is appended per document.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from typing import Iterator, Optional

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_s1.atomic import atomic_path
from megatron_s1.config.schema import ConfigError
from megatron_s1.data.jsonl_input import ONE_OBJECT, text_lines
from megatron_s1.tokenizer import load_tokenizer

_WORKER_TOKENIZER = None
_CHUNK_LINES = 256


def _init_worker(tokenizer_dir: Optional[str]) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer(tokenizer_dir)


def _tokenize_chunk(args: tuple[list[tuple[int, str]], str, str]) -> tuple[list[np.ndarray], int, int]:
    lines, json_key, path = args
    tokenizer = _WORKER_TOKENIZER
    texts = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); {ONE_OBJECT}") \
                from None
        if not isinstance(record, dict) or not isinstance(record.get(json_key), str):
            fields = sorted(record) if isinstance(record, dict) else []
            raise ConfigError(f"{path}:{number}: no string {json_key!r} field; pass --json-key with the text field"
                              f"{' (one of ' + ', '.join(fields) + ')' if fields else ''}")
        texts.append(record[json_key])
    encoded = tokenizer.encode_batch(texts)
    docs = [np.asarray(ids + [tokenizer.eod_id], dtype=np.int32) for ids in encoded]
    return docs, sum(len(t.encode("utf-8")) for t in texts), len(texts)


def _chunks(path: str, json_key: str) -> Iterator[tuple[list[tuple[int, str]], str, str]]:
    batch: list[tuple[int, str]] = []
    for number, line in text_lines(path, what="--input"):
        if not line.strip():
            continue
        batch.append((number, line))
        if len(batch) == _CHUNK_LINES:
            yield batch, json_key, path
            batch = []
    if batch:
        yield batch, json_key, path


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.int32


def preprocess(input_path: str, output_prefix: str, tokenizer_dir: Optional[str] = None, json_key: str = "text",
               workers: int = 1, progress: bool = True) -> dict:
    """Tokenise `input_path` into `output_prefix`.bin/.idx; returns counts and throughput."""
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"input {input_path!r} does not exist or is not a file; pass a jsonl file with --input")
    tokenizer = load_tokenizer(tokenizer_dir)
    # Both files appear under their names only when complete: a crash never leaves a valid-looking pair.
    total_bytes = total_docs = total_tokens = 0
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=os.path.getsize(input_path), unit="B", unit_scale=True, desc="preprocess",
                   file=sys.stderr, disable=None)
    pool = mp.get_context("spawn").Pool(workers, _init_worker, (tokenizer_dir,)) if workers > 1 else None
    try:
        with atomic_path(output_prefix + ".bin") as tmp_bin, atomic_path(output_prefix + ".idx") as tmp_idx:
            builder = IndexedDatasetBuilder(tmp_bin, dtype=token_dtype(tokenizer.vocab_size))
            if pool is None:
                _init_worker(tokenizer_dir)
                results = map(_tokenize_chunk, _chunks(input_path, json_key))
            else:
                results = pool.imap(_tokenize_chunk, _chunks(input_path, json_key), chunksize=4)
            for docs, nbytes, ndocs in results:
                for doc in docs:
                    builder.add_document(doc, [len(doc)])
                    total_tokens += len(doc)
                total_bytes += nbytes
                total_docs += ndocs
                if bar is not None:
                    bar.update(nbytes)
            if total_docs == 0:
                raise ConfigError(f"{input_path} holds no documents (only blank lines); pass a jsonl with one "
                                  f"{{\"{json_key}\": ...}} object per line")
            builder.finalize(tmp_idx)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    return {"documents": total_docs, "tokens": total_tokens, "bytes": total_bytes, "seconds": elapsed,
            "mb_per_s": total_bytes / 1e6 / max(elapsed, 1e-9), "tokens_per_s": total_tokens / max(elapsed, 1e-9)}
