"""Build the bundled tiny chat corpus (megatron_s1/data/corpus/tiny_chat.jsonl), deterministically.

Two data families:
  general     questions about Python standard-library functions, answered with their docstring summary;
              some multi-turn (follow-up asks for the module), some with a short thinking block.
  scientific  molecule facts computed with RDKit from SMILES (molecular formula, weight, ring and
              heavy-atom counts), plus integer arithmetic with a worked reasoning trace.

    python tools/build_chat_corpus.py [--output PATH] [--max-bytes 280000]
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import random

MODULES = ["os", "os.path", "json", "math", "random", "re", "string", "textwrap", "itertools", "functools",
           "collections", "statistics", "shutil", "heapq", "bisect", "fractions", "base64", "zlib", "time",
           "datetime", "copy", "operator", "glob", "fnmatch", "hashlib", "difflib", "csv", "struct", "calendar"]

MOLECULES = [
    ("water", "O"), ("methane", "C"), ("ethanol", "CCO"), ("methanol", "CO"), ("acetic acid", "CC(=O)O"),
    ("benzene", "c1ccccc1"), ("toluene", "Cc1ccccc1"), ("phenol", "Oc1ccccc1"), ("acetone", "CC(=O)C"),
    ("ammonia", "N"), ("carbon dioxide", "O=C=O"), ("formaldehyde", "C=O"), ("ethylene", "C=C"),
    ("acetylene", "C#C"), ("propane", "CCC"), ("butane", "CCCC"), ("cyclohexane", "C1CCCCC1"),
    ("pyridine", "c1ccncc1"), ("aniline", "Nc1ccccc1"), ("benzoic acid", "OC(=O)c1ccccc1"),
    ("glycine", "NCC(=O)O"), ("alanine", "CC(N)C(=O)O"), ("urea", "NC(=O)N"), ("glycerol", "OCC(O)CO"),
    ("caffeine", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"), ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("ibuprofen", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"), ("paracetamol", "CC(=O)Nc1ccc(O)cc1"),
    ("naphthalene", "c1ccc2ccccc2c1"), ("furan", "c1ccoc1"), ("thiophene", "c1ccsc1"), ("pyrrole", "c1cc[nH]c1"),
    ("acetonitrile", "CC#N"), ("dimethyl sulfoxide", "CS(C)=O"), ("chloroform", "ClC(Cl)Cl"),
    ("nitrobenzene", "O=[N+]([O-])c1ccccc1"), ("styrene", "C=Cc1ccccc1"), ("isopropanol", "CC(C)O"),
    ("diethyl ether", "CCOCC"), ("ethyl acetate", "CCOC(C)=O"), ("lactic acid", "CC(O)C(=O)O"),
    ("citric acid", "OC(=O)CC(O)(CC(=O)O)C(=O)O"), ("glucose", "OCC1OC(O)C(O)C(O)C1O"), ("hexane", "CCCCCC"),
    ("cyclopentane", "C1CCCC1"), ("propene", "CC=C"), ("formic acid", "OC=O"), ("hydrogen cyanide", "C#N"),
    ("nicotine", "CN1CCCC1c1cccnc1"), ("serotonin", "NCCc1c[nH]c2ccc(O)cc12"), ("dopamine", "NCCc1ccc(O)c(O)c1"),
    ("benzaldehyde", "O=Cc1ccccc1"), ("acetamide", "CC(N)=O"), ("piperidine", "C1CCNCC1"), ("morpholine", "C1COCCN1"),
    ("indole", "c1ccc2[nH]ccc2c1"), ("quinoline", "c1ccc2ncccc2c1"), ("anisole", "COc1ccccc1"),
    ("xylene", "Cc1ccccc1C"), ("chlorobenzene", "Clc1ccccc1"),
]

SCI_SYSTEM = "You are a careful scientific assistant."
GEN_SYSTEM = "You are a helpful programming assistant."


def stdlib_items() -> list[tuple[str, str, str]]:
    items = []
    for name in MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr)
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
            if 20 <= len(first) <= 220 and not first.startswith(attr + "("):
                items.append((name, attr, first))
    return items


def general(rng: random.Random, items) -> list[dict]:
    out = []
    for k, (mod, fn, doc) in enumerate(items):
        q = rng.choice(["What does {m}.{f} do?", "Explain the Python function {m}.{f}.",
                        "In Python, what is {m}.{f} for?"]).format(m=mod, f=fn)
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": f"{mod}.{fn}: {doc}"}]
        if k % 4 == 1:
            msgs += [{"role": "user", "content": f"Which module do I import to use {fn}?"},
                     {"role": "assistant", "content": f"Import the {mod} module: `import {mod}`."}]
        if k % 5 == 2:
            msgs[-1]["reasoning_content"] = f"The user asks about {fn} from {mod}; summarise its docstring."
        if k % 3 == 0:
            msgs = [{"role": "system", "content": GEN_SYSTEM}, *msgs]
        out.append({"family": "general", "source": "stdlib", "messages": msgs})
    return out


def scientific(rng: random.Random) -> list[dict]:
    from rdkit import Chem
    from rdkit.Chem import Descriptors, rdMolDescriptors

    out = []
    for name, smi in MOLECULES:
        mol = Chem.MolFromSmiles(smi)
        formula = rdMolDescriptors.CalcMolFormula(mol)
        weight = Descriptors.MolWt(mol)
        rings = rdMolDescriptors.CalcNumRings(mol)
        heavy = mol.GetNumHeavyAtoms()
        qa = [
            (f"What is the molecular formula of {name} (SMILES {smi})?", f"The molecular formula of {name} is {formula}."),
            (f"What is the molecular weight of {smi}?", f"The molecular weight of {smi} is {weight:.2f} g/mol."),
            (f"How many rings does {name} have?", f"{name.capitalize()} ({smi}) has {rings} ring{'s' if rings != 1 else ''}."),
            (f"How many heavy atoms are in {smi}?", f"{smi} has {heavy} heavy atom{'s' if heavy != 1 else ''}."),
        ]
        for q, a in qa:
            out.append({"family": "scientific", "source": "rdkit",
                        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        out.append({"family": "scientific", "source": "rdkit", "messages": [
            {"role": "user", "content": f"Give the SMILES of {name}."},
            {"role": "assistant", "content": f"The SMILES of {name} is {smi}."},
            {"role": "user", "content": "And its molecular formula?"},
            {"role": "assistant", "content": f"{formula}, with a molecular weight of {weight:.2f} g/mol.",
             "reasoning_content": f"Count the atoms of {smi}: that gives {formula}."}]})
    for _ in range(160):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(["+", "*", "-"])
        val = {"+": a + b, "*": a * b, "-": a - b}[op]
        word = {"+": "sum", "*": "product", "-": "difference"}[op]
        out.append({"family": "scientific", "source": "arithmetic", "messages": [
            {"role": "system", "content": SCI_SYSTEM},
            {"role": "user", "content": f"Compute {a} {op} {b}."},
            {"role": "assistant", "content": f"{a} {op} {b} = {val}.",
             "reasoning_content": f"The {word} of {a} and {b} is {val}."}]})
    return out


def build(max_bytes: int) -> list[dict]:
    rng = random.Random(1234)
    records = general(rng, stdlib_items()) + scientific(rng)
    rng.shuffle(records)
    kept, size = [], 0
    for rec in records:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        if size + len(line.encode()) > max_bytes:
            break
        kept.append(rec)
        size += len(line.encode())
    return kept


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=os.path.join(here, "megatron_s1", "data", "corpus", "tiny_chat.jsonl"))
    ap.add_argument("--max-bytes", type=int, default=280_000)
    args = ap.parse_args()
    records = build(args.max_bytes)
    with open(args.output, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    fams = {}
    for r in records:
        fams[r["family"]] = fams.get(r["family"], 0) + 1
    print(f"wrote {len(records)} conversations to {args.output} ({os.path.getsize(args.output)} bytes): {fams}")


if __name__ == "__main__":
    main()
