"""Rebuild the bundled demo corpus and its tokenizer (megatron_s1/data/corpus/).

Sources are data shipped inside PyPI packages, so the corpus is reproducible offline:
- general text: docstrings of Python standard-library modules;
- SMILES: RDKit's NCI sample (rdkit/Data/NCI/first_5K.smi);
- protein sequences: pyhmmer's test FASTA (.faa) files.
The tokenizer is a byte-level BPE with Qwen2's pre-tokenizer, trained with HF `tokenizers`.

    python tools/build_bundled_corpus.py [--vocab-size 2048]
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import random

CORPUS_DIR = os.path.join(os.path.dirname(__file__), "..", "megatron_s1", "data", "corpus")
STDLIB_MODULES = [
    "json", "csv", "collections", "itertools", "functools", "argparse", "logging", "pathlib", "subprocess",
    "threading", "asyncio", "datetime", "decimal", "fractions", "statistics", "random", "re", "string",
    "textwrap", "unittest", "doctest", "pickle", "shelve", "sqlite3", "zipfile", "tarfile", "email",
    "http.client", "urllib.request", "xml.etree.ElementTree", "heapq", "bisect", "array", "weakref",
    "copy", "pprint", "enum", "dataclasses", "contextlib", "abc", "typing", "inspect", "ast", "dis",
    "tokenize", "codecs", "unicodedata", "locale", "gettext", "shutil", "tempfile", "glob", "fnmatch",
    "os", "io", "time", "calendar", "math", "cmath", "hashlib", "hmac", "secrets", "base64", "binascii",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def general_documents() -> list[str]:
    docs = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        for _, member in sorted(vars(module).items()):
            if (inspect.isfunction(member) or inspect.isclass(member)) and getattr(member, "__module__", "") == name:
                doc = inspect.getdoc(member)
                if doc and len(doc) > 80:
                    parts.append(doc)
        text = "\n\n".join(p for p in parts if p)
        if len(text) > 200:
            docs.append(text[:6000])
    return docs


def smiles_documents(rng: random.Random) -> list[str]:
    from rdkit import RDConfig

    with open(os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi"), encoding="utf-8") as f:
        smiles = [line.split()[0] for line in f if line.strip()]
    smiles = smiles[:3000]
    docs = []
    for start in range(0, len(smiles), 25):
        chunk = smiles[start:start + 25]
        lines = [f"Compound {start + i + 1}: {s}" for i, s in enumerate(chunk)]
        docs.append("\n".join(lines))
    rng.shuffle(docs)
    return docs


def protein_documents() -> list[str]:
    import pyhmmer

    path = os.path.join(os.path.dirname(pyhmmer.__file__), "tests", "data", "seqs", "938293.PRJEB85.HG003687.faa")
    records, header, seq = [], None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                if header:
                    records.append((header, "".join(seq)))
                header, seq = line[1:].split()[0], []
            elif line:
                seq.append(line)
    if header:
        records.append((header, "".join(seq)))
    records = records[:600]
    return [f"Protein {h} sequence:\n{s}" for h, s in records]


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: str) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from megatron_s1.tokenizer.bpe import QWEN2_PRETOKENIZE_PATTERN

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.model.save(out_dir)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    added = {str(tokenizer.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                             "normalized": False, "single_word": False} for t in SPECIAL_TOKENS}
    config = {"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added, "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "model_max_length": 32768, "clean_up_tokenization_spaces": False}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--out", default=CORPUS_DIR)
    args = parser.parse_args()
    rng = random.Random(0)
    docs = [{"text": t, "source": "general"} for t in general_documents()]
    docs += [{"text": t, "source": "smiles"} for t in smiles_documents(rng)]
    docs += [{"text": t, "source": "protein"} for t in protein_documents()]
    rng.shuffle(docs)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tiny_corpus.jsonl"), "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    train_tokenizer([d["text"] for d in docs], args.vocab_size, os.path.join(args.out, "tokenizer"))
    print(f"wrote {len(docs)} documents and a {args.vocab_size}-token tokenizer to {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
