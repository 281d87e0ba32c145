"""`megatron-s1 tune lr`: run (or read) a sweep of short WSD runs, fit the loss law, recommend LR / batch / switch.

Registered in megatron_s1.cli.PLUGIN_COMMANDS; the method is in megatron_s1/training/lr_tuning.py and docs/scaling.md.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys

from megatron_s1.atomic import atomic_open
from megatron_s1.config.schema import ConfigError

FIXED_OVERRIDES = ["train.log_interval=1", "train.eval_interval=0", "checkpoint.interval=0",
                   "checkpoint.save_final=false", "checkpoint.resume=false", "logging.tensorboard=false",
                   "logging.progress_bar=off"]


def _numbers(text: str, kind=float) -> list:
    try:
        return [kind(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{text!r} is not a comma-separated list of numbers (e.g. 1e-3,3e-3,1e-2)") from None


def _recipe_stages(cfg) -> list:
    return [tuple(int(float(x)) for x in stage) for stage in cfg.train.global_batch_tokens]


def _stages_text(stages: list) -> str:
    return "[" + ",".join(f"[{int(s)},{int(b)}]" for s, b in stages) + "]"


class Sweep:
    """The grid of sweep runs: their folders and `megatron-s1 train` overrides."""

    def __init__(self, args, cfg):
        self.args, self.cfg = args, cfg
        self.min_lr_ratio = cfg.optimizer.min_lr / cfg.optimizer.lr
        if args.seeds < 1:
            raise ConfigError(f"--seeds {args.seeds}: give 1 or more training seeds per setting")
        if args.jobs < 1:
            raise ConfigError(f"--jobs {args.jobs}: give 1 or more sweep runs to train at a time")
        # The recipe's seed first, so a sweep run with one seed is reused when more are asked for.
        self.seeds = [cfg.run.seed + k for k in range(args.seeds)]

    def seeded(self, run_dir: str, lr: float, stages: list, tokens: int) -> list[tuple[str, list[str]]]:
        """(run folder, overrides) of one setting at every seed."""
        out = []
        for k, seed in enumerate(self.seeds):
            folder = run_dir if k == 0 else f"{run_dir}_seed{seed}"
            out.append((folder, self.overrides(folder, lr, stages, tokens) + ([f"run.seed={seed}"] if k else [])))
        return out

    def eval_iters(self, batch_tokens: int) -> int:
        # Every run is scored on the same validation tokens: the first eval_tokens of the split.
        return max(1, self.args.eval_tokens // batch_tokens)

    def overrides(self, run_dir: str, lr: float, stages: list, tokens: int) -> list[str]:
        from megatron_s1.training.schedules import BatchSizeSchedule

        seq = self.cfg.data.seq_length
        schedule = BatchSizeSchedule(stages, seq, self.cfg.data.micro_batch_size, 1)
        steps, consumed = 0, 0
        while consumed < tokens:
            consumed += schedule.global_batch_tokens(consumed)
            steps += 1
        if self.cfg.optimizer.warmup_tokens >= consumed:
            raise ConfigError(f"optimizer.warmup_tokens={self.cfg.optimizer.warmup_tokens} is not below the sweep "
                              f"budget {consumed}; give larger --tokens or lower optimizer.warmup_tokens")
        # noise_scale first: a model-parallel sweep turns it off with an override (and passes --critical-batch).
        return ["train.noise_scale=true", *self.args.overrides, f"run.dir={run_dir}", f"optimizer.lr={lr:g}",
                f"optimizer.min_lr={lr * self.min_lr_ratio:g}", f"train.steps={steps}",
                f"train.global_batch_tokens={_stages_text(stages)}",
                f"train.eval_iters={self.eval_iters(stages[-1][1])}", *FIXED_OVERRIDES]

    def points(self, budgets: str = "", prefix: str = "") -> list[tuple[str, list[str]]]:
        """(run folder, overrides) of every LR x batch x budget x seed (the sweep's --tokens unless `budgets` is
        given)."""
        a = self.args
        out = []
        for lr, batch, tokens in itertools.product(_numbers(a.lrs), _numbers(a.batches, int),
                                                   _numbers(budgets or a.tokens, int)):
            if tokens % batch:
                raise ConfigError(f"token budget {tokens} is not a multiple of batch {batch}; pick budgets that "
                                  f"every --batches value divides")
            out += self.seeded(os.path.join(a.sweep_dir, f"{prefix}lr{lr:g}_b{batch}_t{tokens}"), lr, [(0, batch)],
                               tokens)
        return out

    def command(self, overrides: list[str]) -> list[str]:
        base = ["-m", "megatron_s1.cli", "train"] + (["--config", self.args.config] if self.args.config else [])
        if self.args.nproc > 1:  # --standalone: a free rendezvous port per run, so --jobs runs do not collide
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.args.nproc}",
                    *base[1:], *overrides]
        return [sys.executable, *base, *overrides]

    def run(self, run_dir: str, overrides: list[str]) -> str:
        """Train one point unless it is complete already; '' or why it failed."""
        steps = int(next(o for o in overrides if o.startswith("train.steps=")).split("=", 1)[1])
        if _completed(run_dir, steps):
            print(f"sweep: {run_dir} already complete", flush=True)
            return ""
        os.makedirs(run_dir, exist_ok=True)
        print(f"sweep: training {run_dir}", flush=True)
        with open(os.path.join(run_dir, "train.log"), "w", encoding="utf-8") as log:
            proc = subprocess.run(self.command(overrides), stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return "" if proc.returncode == 0 else f"training exited with {proc.returncode} (see {run_dir}/train.log)"


    def run_all(self, points: list[tuple[str, list[str]]]) -> dict[str, str]:
        """Train every (run folder, overrides) point, --jobs of them at a time; {run folder: why it failed}."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.args.jobs) as pool:  # each thread waits on its own training process
            whys = list(pool.map(lambda point: self.run(*point), points))
        return {run_dir: why for (run_dir, _), why in zip(points, whys) if why}


def _completed(run_dir: str, steps: int) -> bool:
    try:
        with open(os.path.join(run_dir, "valid_metrics.jsonl"), encoding="utf-8") as f:
            return any(json.loads(line)["step"] == steps for line in f if line.strip())
    except FileNotFoundError:
        return False


def _plot(path: str, runs: list, fit, rec, validation: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = sorted({(round(r.batch), r.tokens) for r in runs})
    lrs = [r.lr for r in runs] + [rec.lr] + [v["lr"] for v in validation.values()]
    grid = np.geomspace(min(lrs) / 1.5, max(lrs) * 1.5, 100)
    for i, (batch, tokens) in enumerate(groups):
        color = f"C{i % 10}"
        members = [r for r in runs if (round(r.batch), r.tokens) == (batch, tokens)]
        ax.scatter([r.lr for r in members], [r.final_loss for r in members], color=color,
                   label=f"B={batch} D={tokens} measured")
        ax.plot(grid, [fit.loss(x, members[0].stages, tokens) for x in grid], color=color, alpha=0.7)
    ax.plot(grid, [fit.loss(x, rec.stages, rec.tokens) for x in grid], "k--",
            label=f"predicted at target D={int(rec.tokens)}")
    ax.errorbar([rec.lr], [rec.loss], yerr=[[rec.loss - rec.loss_interval[0]], [rec.loss_interval[1] - rec.loss]],
                fmt="k*", markersize=12, label=f"recommended lr={rec.lr:.3g}")
    for name, marker in (("recommended", "D"), ("recipe", "s")):
        if name in validation:
            ax.scatter([validation[name]["lr"]], [validation[name]["measured"]], marker=marker, facecolors="none",
                       edgecolors="k", s=60, label=f"{name} run at the target (measured)")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final loss")
    ax.set_title("loss law fit (lines) vs sweep runs (points)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def _cmd_tune_lr(args) -> int:
    from megatron_s1.config import load_config
    from megatron_s1.training import lr_tuning as lt

    for module in ("scipy", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tune lr needs {module}; install it with pip install -e '.[tune]'")
    cfg = load_config(args.config, args.overrides)
    if args.target_tokens is None:
        raise ConfigError("give --target-tokens, the token budget of the run to tune for")
    sweep = Sweep(args, cfg)
    if args.holdout_tokens and not (args.lrs and args.batches and args.sweep_dir):
        raise ConfigError("--holdout-tokens trains the sweep's LRs x batches: give it with --lrs, --batches, --tokens "
                          "and --sweep-dir")
    failures, run_dirs = {}, []
    if args.lrs or args.batches or args.tokens:
        if not (args.lrs and args.batches and args.tokens and args.sweep_dir):
            raise ConfigError("a sweep needs --lrs, --batches, --tokens and --sweep-dir together (or read finished "
                              "runs with --runs)")
        points = sweep.points()
        if args.dry_run:
            for _, overrides in points:
                print(" ".join([args.config or "", *overrides]).strip())
            return 0
        failures = sweep.run_all(points)
        run_dirs += [run_dir for run_dir, _ in points]
    run_dirs += lt.find_runs(args.runs)
    if not run_dirs:
        raise ConfigError("no sweep runs: give --lrs/--batches/--tokens/--sweep-dir to run a sweep, or --runs DIR")
    runs = []
    for run_dir in run_dirs:
        if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
            print(f"excluded {run_dir}: {failures.get(run_dir, 'no metrics.jsonl')}")
            continue
        run = lt.read_run(run_dir)
        run.diverged = run.diverged or failures.get(run_dir, "")
        runs.append(run)
    if not runs:
        raise ConfigError(f"none of the {len(run_dirs)} sweep runs wrote metrics.jsonl (listed above); see their "
                          f"train.log, fix the recipe or overrides and rerun")
    for run in runs:
        if run.diverged:
            print(f"excluded {run.name} (lr {run.lr:g}, batch {round(run.batch)}, {run.tokens} tokens): {run.diverged}")
    kept = lt.check_sweep(runs)
    if any(r.loss_source == "train" for r in kept):
        print("note: some runs have no validation loss at their last step; their last training loss is used "
              "(set train.eval_iters > 0 for a steadier final loss)")
    noise = lt.NoiseLaw(float(args.critical_batch), 0.0) if args.critical_batch else lt.fit_noise_law(kept)
    fit = lt.fit_sweep(kept, noise)
    candidates = sorted(_numbers(args.candidate_batches, int) if args.candidate_batches
                        else {stage[1] for r in kept for stage in r.stages})
    first = min((t for r in kept for t, _ in r.critical), default=min(r.stages[0][1] for r in kept))
    rec = lt.bootstrap(kept, fit, candidates, args.target_tokens, first, samples=args.bootstrap)
    report = _report(cfg, kept, runs, fit, rec, lt)
    out_dir = args.sweep_dir or os.path.dirname(os.path.abspath(run_dirs[0]))
    plot = args.plot or os.path.join(out_dir, "tune_lr.png")
    if args.validate:
        report["validation"] = _validate(sweep, fit, rec, out_dir, args.target_tokens)
    if args.holdout_tokens:
        report["holdout"] = _holdout(sweep, fit)
    _plot(plot, kept, fit, rec, report.get("validation", {}))
    with atomic_open(args.out or os.path.join(out_dir, "tune_lr.json")) as f:
        json.dump(report, f, indent=1)
    print(f"wrote {plot} and {args.out or os.path.join(out_dir, 'tune_lr.json')}")
    return 0


def _report(cfg, kept, runs, fit, rec, lt) -> dict:
    n = fit.noise
    p = dict(zip(lt.PARAM_NAMES, (float(x) for x in fit.params)))
    b0, d0, _ = fit.scale
    print(f"sweep: {len(runs)} runs, {len(kept)} used")
    print(f"noise bound: B_crit(t) = {n.b0:.4g} * t^{n.gamma:.3f} tokens ({float(n(rec.tokens)):.0f} tokens at the "
          f"target {int(rec.tokens)})")
    print(f"loss law (rms residual {fit.residual_rms:.4f}): L = {math.exp(p['log_A']):.4f} (D_eff/D0)^-{p['alpha']:.4f}"
          f" + {math.exp(p['log_C']):.4f} (ln lr - ln lr*)^2, lr* = {math.exp(p['k0']):.4g} (B/{b0:.0f})^{p['kB']:.3f}"
          f" (D/{d0:.0f})^{p['kD']:.3f}")
    switch = (f"switch to {rec.stages[1][1]} tokens at {rec.stages[1][0]} tokens seen" if len(rec.stages) > 1
              else "no batch switch before the target")
    print(f"recommended for {int(rec.tokens)} tokens: optimizer.lr={rec.lr:.3g} (68%: {rec.lr_interval[0]:.3g}.."
          f"{rec.lr_interval[1]:.3g}) train.global_batch_tokens={_stages_text(rec.stages)} ({switch})")
    print(f"predicted final loss {rec.loss:.4f} (68% bootstrap over {rec.bootstrap_samples}: "
          f"{rec.loss_interval[0]:.4f}..{rec.loss_interval[1]:.4f})")
    recipe_stages = _recipe_stages(cfg)
    recipe_loss = fit.loss(cfg.optimizer.lr, recipe_stages, rec.tokens)
    print(f"recipe as written (optimizer.lr={cfg.optimizer.lr:g}, train.global_batch_tokens="
          f"{_stages_text(recipe_stages)}): predicted {recipe_loss:.4f}")
    return {"runs": len(runs), "used": len(kept),
            "excluded": {r.name: r.diverged for r in runs if r.diverged},
            "noise_law": {"b0": n.b0, "gamma": n.gamma}, "params": p, "scale": list(fit.scale),
            "residual_rms": fit.residual_rms,
            "recommended": {"lr": rec.lr, "lr_interval": list(rec.lr_interval), "stages": rec.stages,
                            "tokens": rec.tokens, "predicted_loss": rec.loss, "loss_interval": list(rec.loss_interval)},
            "recipe": {"lr": cfg.optimizer.lr, "stages": recipe_stages, "predicted_loss": recipe_loss}}


def _validate(sweep: Sweep, fit, rec, out_dir: str, tokens: int) -> dict:
    """Train at the recommendation and at the recipe's own LR / batch schedule on the target budget."""
    from megatron_s1.training import lr_tuning as lt

    cfg = sweep.cfg
    recipe_stages = _recipe_stages(cfg)
    settings = {}
    for name, lr, stages in (("recommended", rec.lr, rec.stages), ("recipe", cfg.optimizer.lr, recipe_stages)):
        batches = "-".join(str(b) for _, b in stages)
        run_dir = os.path.join(out_dir, f"{lt.VALIDATION_PREFIX}{name}_lr{lr:.4g}_b{batches}")  # new setting: new run
        settings[name] = sweep.seeded(run_dir, lr, stages, tokens)
    failures = sweep.run_all([point for points in settings.values() for point in points])
    result = {}
    for name, points in settings.items():
        why = next((failures[folder] for folder, _ in points if folder in failures), "")
        if why:
            raise RuntimeError(f"validation run {name} failed: {why}")
        result[name] = _compare(fit, [lt.read_run(folder) for folder, _ in points], f"validate {name}")
    gain = result["recipe"]["measured"] - result["recommended"]["measured"]
    print(f"validate: the recommendation is {'better' if gain > 0 else 'worse'} than the recipe by {abs(gain):.4f} "
          f"({100 * gain / result['recipe']['measured']:+.2f}% of the recipe's loss)")
    return result


def _compare(fit, runs: list, label: str) -> dict:
    """The mean final loss of finished runs of one setting (one per seed) against the fit's prediction for their
    LR, batch schedule and tokens."""
    import numpy as np

    run = runs[0]
    predicted = fit.loss(run.lr, run.stages, run.tokens)
    losses = [r.final_loss for r in runs]
    measured = float(np.mean(losses))
    error = (measured - predicted) / predicted
    spread = (f" (mean of {len(losses)} seeds: {', '.join(f'{x:.4f}' for x in losses)}; sd "
              f"{float(np.std(losses, ddof=1)):.4f})" if len(losses) > 1 else "")
    print(f"{label}: lr {run.lr:.3g}, {_stages_text(run.stages)}, {run.tokens} tokens: measured {measured:.4f}"
          f"{spread}, predicted {predicted:.4f} ({100 * error:+.2f}%)")
    return {"lr": run.lr, "stages": run.stages, "tokens": run.tokens, "measured": measured,
            "measured_seeds": losses, "predicted": predicted, "relative_error": error}


def _holdout(sweep: Sweep, fit) -> dict:
    """Train the sweep's LRs x batches at --holdout-tokens (runs the fit never sees) and compare with the fit."""
    import numpy as np

    from megatron_s1.training import lr_tuning as lt

    result = {}
    points = sweep.points(sweep.args.holdout_tokens, lt.HOLDOUT_PREFIX)
    failures = sweep.run_all(points)
    for run_dir, _ in points:
        why = failures.get(run_dir, "")
        run = lt.read_run(run_dir) if not why else None
        if why or run.diverged:
            print(f"holdout {os.path.basename(run_dir)} excluded: {why or run.diverged}")
            continue
        result[run.name] = _compare(fit, [run], f"holdout {run.name}")
    errors = np.array([r["relative_error"] for r in result.values()])
    if len(errors):
        print(f"holdout: {len(errors)} runs, mean error {100 * errors.mean():+.2f}%, rms "
              f"{100 * np.sqrt(np.mean(errors ** 2)):.2f}%, largest {100 * errors[np.argmax(abs(errors))]:+.2f}%")
    return result


def register(subparsers) -> None:
    p = subparsers.add_parser("tune", help="hyper-parameter tools (tune lr: LR / batch from a sweep + scaling law)")
    sub = p.add_subparsers(dest="tune_command", required=True, metavar="<tool>")
    q = sub.add_parser(
        "lr", help="fit loss vs LR / batch / tokens on a sweep of short WSD runs and recommend LR, batch, switch",
        description="Runs (or reads) a sweep of short WSD runs over learning rates x batch sizes x token budgets of "
        "a recipe, fits the loss law and the noise bound, and prints the LR, batch and batch-switch point minimising "
        "the predicted final loss at --target-tokens, with a bootstrap interval; writes tune_lr.json and a PNG. "
        "See docs/scaling.md.")
    q.add_argument("--config", "-c", help="the recipe to tune (its optimizer / WSD settings are kept)")
    q.add_argument("overrides", nargs="*", help="dotted config overrides applied to every run")
    q.add_argument("--lrs", help="peak learning rates of the sweep, e.g. 1e-3,3e-3,1e-2")
    q.add_argument("--batches", help="global batches in tokens, e.g. 1024,2048")
    q.add_argument("--tokens", help="token budgets of the sweep runs, e.g. 8192,16384")
    q.add_argument("--sweep-dir", help="folder of the sweep runs (one sub-folder per point; finished ones are kept)")
    q.add_argument("--runs", nargs="*", default=[], help="finished run folders (or their parent) to read as well")
    q.add_argument("--target-tokens", type=lambda x: int(float(x)), help="token budget to recommend for")
    q.add_argument("--critical-batch", type=float, help="a constant noise bound in tokens instead of the runs' "
                   "logged critical_batch_tokens (for sweeps that cannot run train.noise_scale, e.g. with TP/PP)")
    q.add_argument("--candidate-batches", help="batches to choose from (default: the sweep's)")
    q.add_argument("--eval-tokens", type=int, default=8192, help="validation tokens scoring every run (default 8192)")
    q.add_argument("--seeds", type=int, default=1, help="training seeds per sweep point and validation run (run.seed "
                   "= the recipe's, +1, ...; default 1): averages out the scatter of short runs")
    q.add_argument("--nproc", type=int, default=1, help="processes per sweep run (torchrun; default 1)")
    q.add_argument("--jobs", type=int, default=1, help="sweep / validation / holdout runs trained at a time on this "
                   "machine (default 1; e.g. the core count with OMP_NUM_THREADS=1)")
    q.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates (default 200)")
    q.add_argument("--plot", help="PNG of the fit (default SWEEP_DIR/tune_lr.png)")
    q.add_argument("--out", help="JSON report (default SWEEP_DIR/tune_lr.json)")
    q.add_argument("--dry-run", action="store_true", help="print each sweep run as 'RECIPE overrides...' (one a "
                   "line, for Slurm arrays: docs/scaling.md) and stop")
    q.add_argument("--holdout-tokens", help="also train the sweep's LRs x batches at these budgets (e.g. the "
                   "target) and report the fit's error on them; never part of the fit")
    q.add_argument("--validate", action="store_true", help="then train at the recommendation and at the recipe's "
                   "own LR / batch on the target budget, and compare with the predictions")
    q.set_defaults(func=_cmd_tune_lr)
