"""Intern-S1-format tokenizer directories: which domain models exist, their id offsets, tags and detectors.

A directory holds the base byte-level BPE (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``) and one
SentencePiece BPE model per scientific domain. Domain piece ``i`` of model ``D`` gets the global id
``offset(D) + i``; the ranges of all domains, the base vocabulary and the added tokens must be disjoint.

Three ways a directory declares its layout, first match wins:

1. ``dynamic_tokenizer.json`` (written by ``megatron-s1 tokenizer build --layout compact``): explicit domains,
   offsets, tags and detectors. Use it for your own science tokenizers.
2. Intern-S1-Pro files ``tokenizer_SMILES.model``, ``tokenizer_PROT.model``, ``tokenizer_XNA.model`` (the released
   directory loads as-is): offsets from ``offset_SMILES`` / ``offset_PROT`` / ``offset_XNA`` in
   ``tokenizer_config.json`` (required, as the release's code requires them); tags ``<SMILES>``, ``<protein>``,
   ``<dna>``/``<rna>``; detection SMILES, then protein (not a pure A/T/C/G/U run), then DNA/RNA; a detected span is
   final.
3. Intern-S1 files ``tokenizer_SMILES.model``, ``tokenizer_IUPAC.model``, ``tokenizer_FASTA.model``: offsets from
   ``tokenizer_config.json`` when it has ``offset_<NAME>`` keys, else the fixed ones of the Intern-S1 code
   (151669 / 151929 / 152443); tags ``<SMILES>``/``<SELFIES>`` -> SMILES, ``<IUPAC>`` -> IUPAC, ``<FASTA>`` ->
   FASTA; detection SMILES then protein, the protein detector re-scanning SMILES spans.

``<MOLFORMULA>...</MOLFORMULA>`` protects its content from auto-detection in every generation.
A tag is only active when the directory lists it as an added token (its id comes from there). The releases'
``vocab.json`` also holds one placeholder entry ``<|NAME_piece|>`` per domain piece, at that piece's id (the
released code writes them to fill the id space); they are recognised and never collide with their own domain.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

MANIFEST = "dynamic_tokenizer.json"

# Intern-S1: the offsets its code fixes (Qwen3 vocabulary of 151643 + 26 added tokens first); used when the
# directory's tokenizer_config.json does not give offset_<NAME>.
INTERN_S1_OFFSETS = {"SMILES": 151669, "IUPAC": 151929, "FASTA": 152443}
# Domain name -> tag names, per release (the tags' ids are added tokens of the directory).
INTERN_S1_TAGS = {"SMILES": ["SMILES", "SELFIES"], "IUPAC": ["IUPAC"], "FASTA": ["FASTA"]}
INTERN_S1_PRO_TAGS = {"SMILES": ["SMILES"], "PROT": ["protein"], "XNA": ["dna", "rna"]}
DETECT = {"SMILES": "smiles", "FASTA": "protein", "PROT": "protein", "XNA": "xna"}

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
    # The protein detector leaves runs made only of A/T/C/G/U to DNA/RNA (Intern-S1-Pro; off for Intern-S1).
    protein_skips_nucleotides: bool | None = None

    def __post_init__(self):
        if self.rescan_detected is None:
            self.rescan_detected = self.generation == "intern-s1"
        if self.protein_skips_nucleotides is None:
            self.protein_skips_nucleotides = self.generation != "intern-s1"

    def to_json(self) -> dict:
        return {"generation": self.generation, "domains": [d.to_json() for d in self.domains],
                "protect_tags": list(self.protect_tags), "rescan_detected": self.rescan_detected,
                "protein_skips_nucleotides": self.protein_skips_nucleotides}


def release_layout(generation: str, offsets: dict[str, int]) -> Layout:
    """The domains of a release ('intern-s1' or 'intern-s1-pro') at the given offsets."""
    tags = INTERN_S1_TAGS if generation == "intern-s1" else INTERN_S1_PRO_TAGS
    return Layout(generation, [DomainSpec(name, f"tokenizer_{name}.model", offsets[name], list(tag_names),
                                          DETECT.get(name)) for name, tag_names in tags.items()])


def release_domains(generation: str) -> list[str]:
    return list(INTERN_S1_TAGS if generation == "intern-s1" else INTERN_S1_PRO_TAGS)


def read_config(directory: str) -> dict:
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as err:
        raise TokenizerLayoutError(f"{path} is not valid JSON ({err}); restore it from the release") from None


def _config_offsets(directory: str, generation: str) -> dict[str, int]:
    config = read_config(directory)
    offsets = {}
    for name in release_domains(generation):
        value = config.get(f"offset_{name}")
        if value is None:
            if generation == "intern-s1":
                value = INTERN_S1_OFFSETS[name]
            else:
                raise TokenizerLayoutError(
                    f"{os.path.join(directory, 'tokenizer_config.json')} has no offset_{name}: an Intern-S1-Pro "
                    "directory gives each domain's first id as offset_SMILES / offset_PROT / offset_XNA; add them "
                    f"(as the release does) or describe the layout in {MANIFEST}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TokenizerLayoutError(f"tokenizer_config.json: offset_{name} = {value!r} is not a non-negative "
                                       "integer id; fix it")
        offsets[name] = value
    return offsets


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
                  data.get("rescan_detected"), data.get("protein_skips_nucleotides"))


def release_generation(directory: str) -> str:
    """'intern-s1-pro' when a PROT / XNA model or its offset is there (so a Pro directory missing its models is
    reported as such), else 'intern-s1'."""
    config = read_config(directory)
    pro = any(os.path.exists(os.path.join(directory, f"tokenizer_{n}.model")) or f"offset_{n}" in config
              for n in ("PROT", "XNA"))
    return "intern-s1-pro" if pro else "intern-s1"


def read_layout(directory: str) -> Layout:
    """The layout of `directory` (manifest, else Intern-S1-Pro, else Intern-S1); raises TokenizerLayoutError."""
    manifest = os.path.join(directory, MANIFEST)
    if os.path.exists(manifest):
        layout = _layout_from_manifest(manifest)
    else:
        generation = release_generation(directory)
        layout = release_layout(generation, _config_offsets(directory, generation))
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
                f"move the offsets apart (tokenizer_config.json offset_<NAME> or {MANIFEST}), or rebuild with "
                "`megatron-s1 tokenizer build`")


def placeholder_token(domain: str, piece: str) -> str:
    """The vocab.json entry the releases keep at a domain piece's id, e.g. ``<|SMILES_cc|>``."""
    return f"<|{domain}_{piece}|>"


def check_single_ids(domain_ranges: list[tuple[str, int, int]], added: dict[str, int]) -> None:
    """Added tokens (tags, specials) may not sit inside a domain range ('domain NAME', start, end); the lowest
    offending id is reported."""
    for token, token_id in sorted(added.items(), key=lambda kv: kv[1]):
        for name, start, end in domain_ranges:
            if start <= token_id < end:
                raise TokenizerLayoutError(
                    f"offset collision: added token {token!r} has id {token_id}, inside {name} ids [{start}, {end}); "
                    f"move the domain offset (tokenizer_config.json offset_{name.removeprefix('domain ')} or "
                    f"{MANIFEST}) or renumber the token in tokenizer_config.json")
