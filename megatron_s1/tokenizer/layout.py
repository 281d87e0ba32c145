"""Intern-S1-format tokenizer directories: which domain models exist, their id offsets, tags and detectors.

A directory holds the base byte-level BPE (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``) and one
SentencePiece BPE model per scientific domain. Domain piece ``i`` of model ``D`` gets the global id
``offset(D) + i``; the ranges of all domains, the base vocabulary and the added tokens must be disjoint.

Three ways a directory declares its layout, first match wins:

1. ``dynamic_tokenizer.json`` (written by ``megatron-s1 tokenizer build``): explicit domains, offsets, tags and
   detectors. Use it for your own science tokenizers.
2. Intern-S1 files ``tokenizer_SMILES.model``, ``tokenizer_IUPAC.model``, ``tokenizer_FASTA.model``: the fixed
   offsets of Intern-S1 (151669 / 151929 / 152443, as in transformers' ``InternS1Tokenizer``); tags
   ``<SMILES>``/``<SELFIES>`` -> SMILES, ``<IUPAC>`` -> IUPAC, ``<FASTA>`` -> FASTA; SMILES and protein
   auto-detection.
3. Intern-S1-Pro files ``tokenizer_SMILES.model``, ``tokenizer_PROT.model``, ``tokenizer_XNA.model``: offsets from
   ``INTERN_S1_PRO_OFFSETS`` (override them with a ``dynamic_tokenizer.json``); tags ``<SMILES>``, ``<protein>``,
   ``<dna>``/``<rna>``; SMILES, DNA/RNA and protein auto-detection.

``<MOLFORMULA>...</MOLFORMULA>`` protects its content from auto-detection in every generation.
A tag is only active when the directory lists it as an added token (its id comes from there).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

MANIFEST = "dynamic_tokenizer.json"

# Intern-S1: fixed offsets of the three domain models (Qwen3 vocabulary of 151643 + 26 added tokens first).
INTERN_S1_OFFSETS = {"SMILES": 151669, "IUPAC": 151929, "FASTA": 152443}
# Intern-S1-Pro: the public reference code for this generation was not readable here; these are the ids right
# after the Intern-S1 Qwen3 vocabulary + added tokens, each domain given a 4096-id block. A directory whose real
# offsets differ must declare them in dynamic_tokenizer.json.
INTERN_S1_PRO_OFFSETS = {"SMILES": 151669, "PROT": 155765, "XNA": 159861}

PROTECT_TAGS = ("MOLFORMULA",)


class TokenizerLayoutError(ValueError):
    """A tokenizer directory that cannot be used; the message names the problem and the fix."""


@dataclass
class DomainSpec:
    name: str  # e.g. "SMILES"
    model_file: str  # file name inside the directory
    offset: int
    tags: list[str] = field(default_factory=list)  # tag names without brackets, e.g. ["SMILES", "SELFIES"]
    detect: str | None = None  # 'smiles' | 'protein' | 'xna' | None

    def to_json(self) -> dict:
        return {"name": self.name, "model": self.model_file, "offset": self.offset, "tags": list(self.tags),
                "detect": self.detect}


@dataclass
class Layout:
    generation: str  # 'intern-s1' | 'intern-s1-pro' | 'custom'
    domains: list[DomainSpec]
    protect_tags: list[str] = field(default_factory=lambda: list(PROTECT_TAGS))
    # Later detectors re-scan spans earlier detectors claimed (Intern-S1's behaviour; off for the others).
    rescan_detected: bool | None = None

    def __post_init__(self):
        if self.rescan_detected is None:
            self.rescan_detected = self.generation == "intern-s1"

    def to_json(self) -> dict:
        return {"generation": self.generation, "domains": [d.to_json() for d in self.domains],
                "protect_tags": list(self.protect_tags), "rescan_detected": self.rescan_detected}


def intern_s1_layout() -> Layout:
    o = INTERN_S1_OFFSETS
    return Layout("intern-s1", [
        DomainSpec("SMILES", "tokenizer_SMILES.model", o["SMILES"], ["SMILES", "SELFIES"], "smiles"),
        DomainSpec("IUPAC", "tokenizer_IUPAC.model", o["IUPAC"], ["IUPAC"], None),
        DomainSpec("FASTA", "tokenizer_FASTA.model", o["FASTA"], ["FASTA"], "protein"),
    ])


def intern_s1_pro_layout() -> Layout:
    o = INTERN_S1_PRO_OFFSETS
    return Layout("intern-s1-pro", [
        DomainSpec("SMILES", "tokenizer_SMILES.model", o["SMILES"], ["SMILES"], "smiles"),
        DomainSpec("PROT", "tokenizer_PROT.model", o["PROT"], ["protein"], "protein"),
        DomainSpec("XNA", "tokenizer_XNA.model", o["XNA"], ["dna", "rna"], "xna"),
    ])


def is_dynamic_dir(directory: str) -> bool:
    """Does `directory` hold a dynamic (multi-domain) tokenizer rather than a plain BPE?"""
    if not directory or not os.path.isdir(directory):
        return False
    if os.path.exists(os.path.join(directory, MANIFEST)):
        return True
    return any(os.path.exists(os.path.join(directory, f"tokenizer_{n}.model")) for n in ("SMILES", "PROT", "FASTA",
                                                                                         "XNA", "IUPAC"))


def _layout_from_manifest(path: str) -> Layout:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        domains = [DomainSpec(d["name"], d["model"], int(d["offset"]), list(d.get("tags", [])), d.get("detect"))
                   for d in data["domains"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TokenizerLayoutError(f"{path}: cannot read the domain layout ({err!r}); regenerate it with "
                                   "`megatron-s1 tokenizer build`") from None
    return Layout(data.get("generation", "custom"), domains, list(data.get("protect_tags", PROTECT_TAGS)),
                  data.get("rescan_detected"))


def read_layout(directory: str) -> Layout:
    """The layout of `directory` (manifest, else Intern-S1, else Intern-S1-Pro); raises TokenizerLayoutError."""
    manifest = os.path.join(directory, MANIFEST)
    if os.path.exists(manifest):
        layout = _layout_from_manifest(manifest)
    elif os.path.exists(os.path.join(directory, "tokenizer_PROT.model")) or os.path.exists(
            os.path.join(directory, "tokenizer_XNA.model")):
        layout = intern_s1_pro_layout()
    else:
        layout = intern_s1_layout()
    for d in layout.domains:
        if not os.path.exists(os.path.join(directory, d.model_file)):
            raise TokenizerLayoutError(
                f"tokenizer directory {directory!r} ({layout.generation} layout) has no {d.model_file} for domain "
                f"{d.name}; add the SentencePiece model (`megatron-s1 tokenizer train-domain`) or list only the "
                f"domains you have in {MANIFEST}")
        if d.detect not in (None, "smiles", "protein", "xna"):
            raise TokenizerLayoutError(f"domain {d.name}: unknown detector {d.detect!r}; use smiles, protein, xna "
                                       "or null")
    names = [d.name for d in layout.domains]
    if len(set(names)) != len(names):
        raise TokenizerLayoutError(f"{directory}: domain names repeat ({names}); give each domain one entry")
    return layout


def check_id_ranges(ranges: list[tuple[str, int, int]]) -> None:
    """Raise TokenizerLayoutError if any two half-open id ranges (name, start, end) overlap."""
    ordered = sorted((r for r in ranges if r[2] > r[1]), key=lambda r: (r[1], r[2]))
    for (name_a, start_a, end_a), (name_b, start_b, end_b) in zip(ordered, ordered[1:]):
        if start_b < end_a:
            raise TokenizerLayoutError(
                f"offset collision: {name_b} ids [{start_b}, {end_b}) overlap {name_a} ids [{start_a}, {end_a}); "
                f"move the offsets apart in {MANIFEST} (or rebuild with `megatron-s1 tokenizer build`)")


def check_single_ids(base_ranges: list[tuple[str, int, int]], added: dict[str, int]) -> None:
    """Added tokens (tags, specials) may not sit inside a domain range."""
    for token, token_id in added.items():
        for name, start, end in base_ranges:
            if start <= token_id < end:
                raise TokenizerLayoutError(
                    f"offset collision: added token {token!r} has id {token_id}, inside {name} ids [{start}, {end}); "
                    f"move the domain offset in {MANIFEST} or renumber the token in tokenizer_config.json")
