"""Make your own science tokenizer: train domain SentencePiece models and assemble a dynamic tokenizer directory.

``train_domain`` trains a SentencePiece BPE model in the format the dynamic tokenizer loads (identity
normalizer, no dummy prefix, whitespace kept, unknown piece at id 0) so that ``decode(encode(x)) == x``.
``build_directory`` copies a base byte-level BPE directory, adds the domain models and their tag tokens, and
fixes the id offsets (``compact``: right after the base vocabulary, recorded in ``dynamic_tokenizer.json``;
``intern-s1`` / ``intern-s1-pro``: the id layout of those releases, see ``_plan_layout``).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from typing import Iterable, Iterator

import sentencepiece as spm

from megatron_s1.atomic import atomic_open
from megatron_s1.tokenizer.layout import (INTERN_S1_OFFSETS, INTERN_S1_PRO_TAGS, INTERN_S1_TAGS, MANIFEST,
                                          PROTECT_TAGS, DomainSpec, Layout, TokenizerLayoutError, check_id_ranges,
                                          check_single_ids, placeholder_token, release_domains)

# --domain value -> (model name, default tags, detector)
DOMAINS = {
    "smiles": ("SMILES", ["SMILES", "SELFIES"], "smiles"),
    "iupac": ("IUPAC", ["IUPAC"], None),
    "fasta": ("FASTA", ["FASTA"], "protein"),
    "protein": ("PROT", ["protein"], "protein"),
    "xna": ("XNA", ["dna", "rna"], "xna"),
}
NAME_DEFAULTS = {name: (tags, det) for name, tags, det in DOMAINS.values()}
CANONICAL_ORDER = ["SMILES", "IUPAC", "FASTA", "PROT", "XNA"]

FASTA_SUFFIXES = (".fa", ".faa", ".fna", ".fasta", ".ffn", ".frn")


def read_documents(path: str, column: str | None = None) -> Iterator[str]:
    """Documents of a data file: FASTA records (sequence lines joined), .smi first field, .csv column
    (`column`, else 'smiles'/'iupac'/first), .jsonl 'text' field, else one document per non-empty line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    lower = path.lower()
    with open(path, encoding="utf-8", newline="") as f:
        if lower.endswith(FASTA_SUFFIXES):
            seq: list[str] = []
            for line in f:
                line = line.strip()
                if line.startswith(">"):
                    if seq:
                        yield "".join(seq)
                    seq = []
                elif line:
                    seq.append(line)
            if seq:
                yield "".join(seq)
        elif lower.endswith(".smi"):
            for line in f:
                fields = line.split()
                if fields and not fields[0].lower() == "smiles":
                    yield fields[0]
        elif lower.endswith(".csv"):
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            key = column or next((c for c in ("smiles", "SMILES", "iupac", "text") if c in fields), None) or (
                fields[0] if fields else None)
            if key is None or key not in fields:
                raise ValueError(f"{path}: no column {column!r}; columns are {fields}")
            for row in reader:
                if row.get(key):
                    yield row[key]
        elif lower.endswith(".jsonl"):
            for line in f:
                if line.strip():
                    yield json.loads(line)[column or "text"]
        else:
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    yield line


def train_domain(domain: str, inputs: Iterable[str], vocab_size: int, out_dir: str, column: str | None = None,
                 name: str | None = None, max_piece_length: int = 16) -> str:
    """Train ``tokenizer_<NAME>.model`` (SentencePiece BPE) on the documents of `inputs`; returns its path."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use one of {', '.join(DOMAINS)}")
    model_name = name or DOMAINS[domain][0]
    docs = [d for path in inputs for d in read_documents(path, column)]
    if not docs:
        raise ValueError(f"no training documents in {list(inputs)}")
    os.makedirs(out_dir, exist_ok=True)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(docs), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
            character_coverage=1.0, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, split_by_unicode_script=False, split_by_number=False,
            split_by_whitespace=True, split_digits=False, max_sentencepiece_length=max_piece_length,
            max_sentence_length=1 << 16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=False,
            num_threads=min(4, os.cpu_count() or 1), minloglevel=2)
    except RuntimeError as err:
        raise ValueError(f"sentencepiece could not train a {vocab_size}-piece {model_name} model on {len(docs)} "
                         f"documents ({err}); lower --vocab-size or add data") from None
    path = os.path.join(out_dir, f"tokenizer_{model_name}.model")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def _piece_count(model_path: str) -> int:
    return spm.SentencePieceProcessor(model_file=model_path).get_piece_size()


def _tag_ids(tag_names: list[str], first_id: int) -> dict[str, int]:
    """<TAG>, </TAG> for each tag, consecutive ids from `first_id`."""
    texts = [text for tag in tag_names for text in (f"<{tag}>", f"</{tag}>")]
    return {text: first_id + i for i, text in enumerate(texts)}


def _plan_layout(layout: str, names: list[str], sizes: dict[str, int], tags: dict[str, list[str]],
                 next_id: int) -> tuple[list[DomainSpec], dict[str, int]]:
    """Offsets and tag ids of each layout:

    * compact: each domain right after the previous ids, its tags right after its pieces;
    * intern-s1: the offsets the Intern-S1 code fixes, tags right after each domain's pieces (as that release:
      a 256-piece SMILES model puts ``<SMILES>`` at 151925);
    * intern-s1-pro: all tags first, right after the base's ids, then the domains one after another (as that
      release: tags 151686-151693, SMILES at 151694).
    """
    specs: list[DomainSpec] = []
    tag_ids: dict[str, int] = {}
    if layout == "intern-s1-pro":
        tag_ids = _tag_ids([t for name in names for t in tags[name]], next_id)
        next_id += len(tag_ids)
    for name in names:
        offset = INTERN_S1_OFFSETS[name] if layout == "intern-s1" else next_id
        detect = NAME_DEFAULTS.get(name, ([], None))[1]
        specs.append(DomainSpec(name, f"tokenizer_{name}.model", offset, tags[name], detect))
        next_id = offset + sizes[name]
        if layout != "intern-s1-pro":
            own = _tag_ids(tags[name], next_id)
            tag_ids.update(own)
            next_id += len(own)
    return specs, tag_ids


def build_directory(base_dir: str, out_dir: str, models: dict[str, str], layout: str = "compact",
                    tags: dict[str, list[str]] | None = None) -> Layout:
    """Assemble a dynamic tokenizer directory from a base BPE dir and {NAME: model path}.

    layout: 'compact' (offsets right after the base ids, written to dynamic_tokenizer.json), 'intern-s1'
    (SMILES/IUPAC/FASTA as that release lays them out) or 'intern-s1-pro' (SMILES/PROT/XNA as that release: tags
    before the domains, offset_<NAME> in tokenizer_config.json). The release layouts also write the releases'
    ``<|NAME_piece|>`` placeholders into vocab.json, so the released tokenizer code loads the directory too.
    """
    if layout not in ("compact", "intern-s1", "intern-s1-pro"):
        raise ValueError(f"unknown layout {layout!r}; use compact, intern-s1 or intern-s1-pro")
    for fname in ("vocab.json", "merges.txt"):
        if not os.path.exists(os.path.join(base_dir, fname)):
            raise TokenizerLayoutError(f"base tokenizer {base_dir!r} has no {fname}; pass an HF byte-level BPE "
                                       "directory (vocab.json + merges.txt) as --base")
    for name, path in models.items():
        if not os.path.exists(path):
            raise TokenizerLayoutError(f"domain model {path!r} for {name} does not exist; train it with "
                                       "`megatron-s1 tokenizer train-domain`")
    config_path = os.path.join(base_dir, "tokenizer_config.json")
    config = json.load(open(config_path, encoding="utf-8")) if os.path.exists(config_path) else {}
    added = config.setdefault("added_tokens_decoder", {})
    vocab = json.load(open(os.path.join(base_dir, "vocab.json"), encoding="utf-8"))
    next_id = max([int(k) for k in added] + list(vocab.values())) + 1
    names = sorted(models, key=lambda n: CANONICAL_ORDER.index(n) if n in CANONICAL_ORDER else 99)
    release = layout != "compact"
    if release:
        generation = layout
        wanted = release_domains(generation)
        if set(names) != set(wanted):
            raise TokenizerLayoutError(f"layout {layout} needs exactly the domains {wanted}, got {names}; use "
                                       "--layout compact for other sets")
        names = wanted
        tags = {name: list((INTERN_S1_TAGS if layout == "intern-s1" else INTERN_S1_PRO_TAGS)[name])
                for name in names}
    else:
        generation = "custom"
        tags = {name: list((tags or {}).get(name, NAME_DEFAULTS.get(name, ([name], None))[0])) for name in names}
    sizes = {name: _piece_count(models[name]) for name in names}
    specs, tag_ids = _plan_layout(layout, names, sizes, tags, next_id)
    existing = {entry["content"] for entry in added.values()}
    for text, tid in tag_ids.items():
        if text in existing:
            raise TokenizerLayoutError(f"base tokenizer already has an added token {text!r}; remove it from "
                                       f"{config_path} or rename the tag")
        if str(tid) in added:
            raise TokenizerLayoutError(f"offset collision: tag {text!r} would take id {tid}, already used by "
                                       f"{added[str(tid)]['content']!r}; use --layout compact")
    ranges = [("base vocabulary", 0, max(vocab.values()) + 1)]
    ranges += [(f"domain {s.name}", s.offset, s.offset + sizes[s.name]) for s in specs]
    check_id_ranges(ranges)
    check_single_ids(ranges[1:], {**{e["content"]: int(k) for k, e in added.items()}, **tag_ids})
    for text, tid in tag_ids.items():
        added[str(tid)] = {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": not release}
    config["added_tokens_decoder"] = dict(sorted(added.items(), key=lambda kv: int(kv[0])))
    config.setdefault("tokenizer_class", "Qwen2Tokenizer")
    if release:
        for spec in specs:
            config[f"offset_{spec.name}"] = spec.offset
            sp = spm.SentencePieceProcessor(model_file=models[spec.name])
            vocab.update({placeholder_token(spec.name, sp.id_to_piece(i)): spec.offset + i
                          for i in range(sizes[spec.name])})
    result = Layout(generation, specs, list(PROTECT_TAGS))
    os.makedirs(out_dir, exist_ok=True)
    with atomic_open(os.path.join(out_dir, "vocab.json")) as f:
        json.dump(vocab, f, ensure_ascii=False)
    shutil.copyfile(os.path.join(base_dir, "merges.txt"), os.path.join(out_dir, "merges.txt"))
    with atomic_open(os.path.join(out_dir, "tokenizer_config.json")) as f:
        json.dump(config, f, indent=1, ensure_ascii=False)
    for s in specs:
        shutil.copyfile(models[s.name], os.path.join(out_dir, s.model_file))
    manifest = os.path.join(out_dir, MANIFEST)
    if layout == "compact":
        with atomic_open(manifest) as f:
            json.dump(result.to_json(), f, indent=1)
    elif os.path.exists(manifest):
        os.remove(manifest)
    return result
