"""`megatron-s1 data sft-ablate`: train one SFT recipe over several mixture-ratio settings and compare.

    megatron-s1 data sft-ablate --config examples/sft/tiny_cpu.yaml --ratios 1,1 --ratios 3,1 \\
        --out runs/sft_ablate train.steps=20

Each setting runs ``megatron-s1 train --config C sft.ratios=[...] run.dir=OUT/ratios_a_b [overrides]``
(sequentially; ``--nproc`` > 1 through torchrun). The summary (OUT/summary.json, one line per setting
on stdout) holds the ratios, the realised mixture (run.dir/sft_mixture.json) and the final held-out
assistant-token loss, so the settings can be compared at equal compute.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from megatron_s1.data.curation.errors import CurationError


def parse_ratios(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(":", ",").split(",") if x.strip()]
    except ValueError:
        raise CurationError(f"--ratios {text!r} is not a comma-separated list of numbers", "e.g. --ratios 3,1") from None
    if not values or any(v < 0 for v in values):
        raise CurationError(f"--ratios {text!r} needs non-negative numbers")
    return values


def setting_name(ratios: list[float]) -> str:
    return "ratios_" + "_".join(f"{r:g}".replace(".", "p") for r in ratios)


def train_command(config: str, ratios: list[float], run_dir: str, overrides: list[str], nproc: int = 1) -> list[str]:
    head = [sys.executable, "-m", "megatron_s1.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "-m", "megatron_s1.cli"]
    return [*head, "train", "--config", config, f"sft.ratios=[{','.join(f'{r:g}' for r in ratios)}]",
            f"run.dir={run_dir}", *overrides]


def run_ablation(config: str, settings: list[list[float]], out: str, overrides: list[str], nproc: int = 1,
                 dry_run: bool = False) -> list[dict]:
    summary = []
    for ratios in settings:
        run_dir = os.path.join(out, setting_name(ratios))
        cmd = train_command(config, ratios, run_dir, overrides, nproc)
        row = {"ratios": ratios, "run_dir": run_dir, "command": " ".join(cmd)}
        if not dry_run:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise CurationError(f"training with ratios {ratios} failed (exit {proc.returncode}): "
                                    f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
            result = [json.loads(line)["result"] for line in proc.stdout.splitlines() if line.startswith('{"result"')]
            row["valid_loss"] = result[-1].get("valid_loss") if result else None
            mix_path = os.path.join(run_dir, "sft_mixture.json")
            if os.path.exists(mix_path):
                with open(mix_path, encoding="utf-8") as f:
                    mix = json.load(f)
                row["mixture"] = {d["name"]: d["share"] for d in mix["datasets"]}
                row["mixture_sha256"] = mix["sha256"]
        summary.append(row)
        print(json.dumps(row), flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def _cmd(args) -> int:
    if not os.path.exists(args.config):
        raise CurationError(f"config {args.config!r} does not exist")
    settings = [parse_ratios(r) for r in args.ratios]
    run_ablation(args.config, settings, args.out, args.overrides, args.nproc, args.dry_run)
    return 0


def register(sub) -> None:
    from megatron_s1.data.cli import HelpFormatter, safe

    p = sub.add_parser("sft-ablate", help="train one SFT recipe over several mixture ratios and compare held-out loss",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", required=True, help="SFT recipe (train.task=sft) with sft.datasets")
    p.add_argument("--ratios", action="append", required=True, help="one setting, e.g. 3,1 (repeat the flag)")
    p.add_argument("--out", default="runs/sft_ablate", help="parent directory of the runs and summary.json")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun when > 1)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    p.set_defaults(func=safe(_cmd))
