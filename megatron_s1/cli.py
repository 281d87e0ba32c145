"""`megatron-s1 <command>`: one entry point for every stage.

Run `megatron-s1 <command> --help` for the options of each command. Multi-process runs go through
torchrun (or srun): `torchrun --nproc-per-node 2 -m megatron_s1.cli train --config ...`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

# Modules that add sub-commands: each exposes register(subparsers).
PLUGIN_COMMANDS = [
    "megatron_s1.tokenizer.cli",  # megatron-s1 tokenizer ...
    "megatron_s1.conversion.cli",  # megatron-s1 convert ...
    "megatron_s1.data.curation.cli",  # megatron-s1 data ... (curation; `data` itself: megatron_s1/data/cli.py)
    "megatron_s1.models.ckpt_cli",  # megatron-s1 ckpt ... (expand-experts)
    "megatron_s1.rl.cli",  # megatron-s1 rl
    "megatron_s1.data.best_of_n",  # megatron-s1 data best-of-n, sft-ablate
    "megatron_s1.training.tune_cli",  # megatron-s1 tune lr
]

OVERRIDES_HELP = ("dotted config overrides, e.g. train.steps=20 model.num_layers=2 parallel.tensor=2 "
                  "(values parsed as YAML; unknown keys are rejected with a suggestion)")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML recipe, e.g. examples/cpt/tiny_cpu.yaml; without it the "
                        "built-in defaults (tiny model, bundled tokenizer) are used")
    parser.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def _cmd_train(args) -> int:
    from megatron_s1.config import load_config
    from megatron_s1.training.loop import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"result": result}), flush=True)
    return 0


def _cmd_eval(args) -> int:
    from megatron_s1.config import ConfigError, load_config
    from megatron_s1.training.checkpointing import read_trainer_state, resolve_checkpoint_dir
    from megatron_s1.training.loop import Trainer

    # --ckpt: any checkpoint (a run's, converted, averaged) loaded as pretrained weights, its model config filling
    # what the recipe leaves unstated; without it the run.dir's latest complete checkpoint.
    extra = [f"checkpoint.pretrained={args.ckpt}", "checkpoint.resume=false"] if args.ckpt else \
        ["checkpoint.resume=true"]
    cfg = load_config(args.config, list(args.overrides) + extra)
    trainer = Trainer(cfg)
    trainer._maybe_resume()
    if trainer._resumed_from is None and not args.ckpt:
        raise ConfigError(f"no checkpoint under {cfg.run.dir}/checkpoints; train first, set run.dir or pass --ckpt DIR")
    trainer.train_ds, trainer.valid_ds, _ = trainer._datasets()
    loss = trainer.evaluate()
    if trainer.env.is_main:
        path = trainer._resumed_from or resolve_checkpoint_dir(args.ckpt)
        print(json.dumps({"checkpoint": path, "step": read_trainer_state(path)["step"], "valid_loss": loss}),
              flush=True)
    return 0


def _cmd_preprocess(args) -> int:
    from megatron_s1.data.preprocess import preprocess

    stats = preprocess(args.input, args.output_prefix, args.tokenizer, args.json_key, args.workers,
                       progress=not args.quiet)
    print(f"wrote {args.output_prefix}.bin/.idx: {stats['documents']} documents, {stats['tokens']} tokens, "
          f"{stats['mb_per_s']:.2f} MB/s, {stats['tokens_per_s']:.0f} tokens/s")
    return 0


def _cmd_config(args) -> int:
    import yaml

    from megatron_s1.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-s1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library warnings (also "
                        "accepted after the sub-command; logging.verbose=true shows the warnings only)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = sub.add_parser("train", help="train a model from a YAML recipe (auto-resumes from run.dir)",
                       description="Train from a recipe. Writes run.dir/{checkpoints,metrics.jsonl,tensorboard}; "
                       "resumes from run.dir/checkpoints/latest when present. SIGTERM/SIGUSR1 save and exit 0.")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="validation loss of a checkpoint (run.dir's latest, or --ckpt DIR)",
                       description="Load run.dir/checkpoints/latest (or --ckpt DIR) and report the validation loss "
                       "(train.eval_iters global batches of the validation split).")
    _add_config_args(p)
    p.add_argument("--ckpt", default=None, help="any Megatron checkpoint (iter_* directory, checkpoints/ root, "
                   "converted or averaged); model fields the recipe leaves unstated come from it")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("preprocess", help="tokenise jsonl into a Megatron .bin/.idx dataset",
                       description="Tokenise a jsonl file (one JSON object per line) into PREFIX.bin/PREFIX.idx "
                       "with one end-of-document token per document.")
    p.add_argument("--input", required=True, help="input .jsonl file")
    p.add_argument("--output-prefix", required=True, help="output path without suffix (writes .bin and .idx)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the bundled demo tokenizer)")
    p.add_argument("--json-key", default="text", help="field holding the document text (default: text)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="tokeniser processes (default: CPU count - 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("config", help="print the fully resolved config of a recipe + overrides",
                       description="Resolve a recipe (preset, file, overrides) and print it as YAML.")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)

    for module_name in PLUGIN_COMMANDS:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv=None) -> int:
    """Exit codes: 0 ok, 2 bad input or configuration, 1 runtime failure, 130 interrupted (megatron_s1/console.py)."""
    from megatron_s1 import console

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere, not only before the sub-command
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    console.configure(verbose=debug or console.verbose_requested(argv, getattr(args, "config", None)))
    return console.run_command(args.func, args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
