"""Learning rate, batch size and batch-switch point from a sweep of short WSD runs (Intern-S1 §4.2.1 / §4.2.3).

The sweep's runs are read from their metrics.jsonl (peak LR, batch stages, tokens, critical batch from
train.noise_scale) and valid_metrics.jsonl (final loss). Two laws are fitted:

* the noise bound, the critical batch as a power of tokens seen, B_crit(t) = b0 * t^gamma (the noise scale grows
  as the loss falls, McCandlish et al. 2018 §4), fitted to the runs' logged critical_batch_tokens;
* the loss law `predicted_loss` (its docstring states the form and what it follows).

`recommend` then solves the constrained choice: the smallest candidate batch at or above the noise bound at every
point of training (a switch to the next candidate where B_crit(t) crosses it) and the LR minimising the predicted
final loss at the target token budget; a residual bootstrap gives the uncertainty. docs/scaling.md.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from megatron_s1.config.schema import ConfigError

# (log A, alpha, log C, k0, kB, kD): see predicted_loss.
PARAM_NAMES = ("log_A", "alpha", "log_C", "k0", "kB", "kD")
MIN_LRS, MIN_BATCHES, MIN_BUDGETS = 3, 2, 2
MIN_POINTS = len(PARAM_NAMES) + 2  # two residual degrees of freedom at least
METRICS_KEYS = ("step", "consumed_tokens", "global_batch_tokens", "loss", "lr")
# Runs of `tune lr --validate` / `--holdout-tokens`: beside the sweep's, never part of the fit.
VALIDATION_PREFIX, HOLDOUT_PREFIX = "validate_", "holdout_"


@dataclass
class SweepRun:
    name: str
    lr: float  # peak LR (largest logged)
    stages: list  # [(start_tokens, batch_tokens), ...] as the run used them
    tokens: int  # tokens seen at the end
    final_loss: float
    loss_source: str  # "valid" | "train"
    diverged: str = ""  # why the run is excluded ("" = kept)
    critical: list = field(default_factory=list)  # [(consumed_tokens, critical_batch_tokens), ...]

    @property
    def batch(self) -> float:
        return mean_log_batch(self.stages, self.tokens)


def _read_jsonl(path: str, keys: tuple) -> list[dict]:
    """The records of a metrics file; a line that is not a record with `keys` is one ConfigError naming it."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                missing = [k for k in keys if k not in record]
            except (json.JSONDecodeError, TypeError):
                record, missing = None, None
            if missing is None or missing:
                why = f"lacks {', '.join(missing)}" if missing else "is not a JSON record"
                raise ConfigError(f"{path} line {number} {why} (not a finished megatron-s1 train run?); rerun that "
                                  f"sweep point or remove its folder")
            records.append(record)
    return records


def read_run(run_dir: str) -> SweepRun:
    """One sweep run from its metrics files; `diverged` says why it cannot be used (non-finite or no progress)."""
    records = _read_jsonl(os.path.join(run_dir, "metrics.jsonl"), METRICS_KEYS)
    name = os.path.basename(os.path.normpath(run_dir))
    if not records:
        raise ConfigError(f"{run_dir}/metrics.jsonl is empty; rerun that sweep point or remove its folder")
    stages = []
    consumed = 0
    for r in records:  # each record's batch was used for the step that ended at its consumed_tokens
        batch = int(r["global_batch_tokens"])
        start = r["consumed_tokens"] - batch
        if not stages or stages[-1][1] != batch:
            stages.append((0 if not stages else start, batch))
        consumed = r["consumed_tokens"]
    valid_path = os.path.join(run_dir, "valid_metrics.jsonl")
    valid = _read_jsonl(valid_path, ("step", "loss")) if os.path.exists(valid_path) else []
    valid = [v for v in valid if v["step"] == records[-1]["step"]]
    final, source = (valid[-1]["loss"], "valid") if valid else (records[-1]["loss"], "train")
    losses = [r["loss"] for r in records] + [final]
    diverged = ""
    if not all(math.isfinite(x) for x in losses):
        diverged = "non-finite loss"
    elif final >= records[0]["loss"]:
        diverged = f"final loss {final:.4f} not below the first step's {records[0]['loss']:.4f}"
    critical = [(r["consumed_tokens"], r["critical_batch_tokens"]) for r in records
                if r.get("critical_batch_tokens") is not None]
    return SweepRun(name, max(r["lr"] for r in records), stages, consumed, float(final), source, diverged, critical)


def find_runs(paths: list[str]) -> list[str]:
    """Run folders among `paths` (a run folder itself, or a folder whose sub-folders are runs; validation runs
    and held-out runs of `tune lr` are skipped there)."""
    runs = []
    for path in paths:
        if os.path.exists(os.path.join(path, "metrics.jsonl")):
            runs.append(path)
        elif os.path.isdir(path):
            found = sorted(os.path.join(path, d) for d in os.listdir(path)
                           if not d.startswith((VALIDATION_PREFIX, HOLDOUT_PREFIX))
                           and os.path.exists(os.path.join(path, d, "metrics.jsonl")))
            if not found:
                raise ConfigError(f"{path} holds no sweep runs (no metrics.jsonl in it or its sub-folders); pass "
                                  f"the folder of a finished sweep, or run one with --lrs/--batches/--tokens")
            runs += found
        else:
            raise ConfigError(f"{path} does not exist; pass sweep run folders (with metrics.jsonl) or their parent")
    return runs


# ------------------------------------------------------------------ laws
def mean_log_batch(stages: list, tokens: float) -> float:
    """Token-weighted geometric mean batch of a staged schedule (the batch the LR law sees)."""
    bounds = [s[0] for s in stages[1:]] + [tokens]
    total = 0.0
    for (start, batch), end in zip(stages, bounds):
        total += max(0.0, min(end, tokens) - start) * math.log(batch)
    return math.exp(total / tokens)


@dataclass
class NoiseLaw:
    """B_crit(t) = b0 * t^gamma (tokens), from the sweep runs' logged critical batch."""
    b0: float
    gamma: float

    def __call__(self, tokens):
        return self.b0 * np.power(np.maximum(tokens, 1.0), self.gamma)


def fit_noise_law(runs: list[SweepRun]) -> NoiseLaw:
    points = [(t, b) for run in runs for t, b in run.critical if b > 0]
    if len({t for t, _ in points}) < 2:
        raise ConfigError("the sweep runs log no critical batch; run them with train.noise_scale=true "
                          "(tune lr sets it) or pass --critical-batch TOKENS as the noise bound")
    x = np.log([t for t, _ in points])
    y = np.log([b for _, b in points])
    gamma, log_b0 = np.polyfit(x, y, 1)
    return NoiseLaw(float(math.exp(log_b0)), float(gamma))


def effective_tokens(stages: list, tokens: float, noise: NoiseLaw, points: int = 256) -> float:
    """D_eff = integral dt / (1 + B(t) / B_noise(t)): tokens as a batch far below the noise scale would use them
    (McCandlish et al. 2018, Eq. 2.11: E = E_min (1 + B / B_noise) examples reach a given loss)."""
    t = np.geomspace(1.0, tokens, points)
    batch = np.full_like(t, stages[0][1], dtype=float)
    for start, b in stages[1:]:
        batch[t >= start] = b
    integrand = 1.0 / (1.0 + batch / noise(t))
    return float(np.trapezoid(integrand, t) + integrand[0])  # the [0, 1] token strip


def predicted_loss(params, lr, batch, eff_tokens, tokens, scale: tuple[float, float, float]):
    """Final loss of a WSD run at peak LR `lr`, batch `batch` tokens, `tokens` seen (`eff_tokens` = D_eff):

        L = A (D_eff / D0)^(-alpha) + C (ln lr - ln lr*(B, D))^2,   ln lr*(B, D) = k0 + kB ln(B/B0) + kD ln(D/D0)

    * quadratic in log-LR around the optimum at every (batch, budget): the basin used by DeepSeek LLM §3.1 and by
      Bjorck et al. 2024 ("Scaling Optimal LR Across Token Horizons"), which fit loss vs log LR by a parabola;
    * the optimal LR a power law in batch and token budget (DeepSeek LLM's eta_opt power law, Bjorck et al.'s
      lr* ~ D^-beta): a line in log space;
    * the loss at the optimum Kaplan et al. 2020's data law L(D) = (D_c / D)^alpha_D (Eq. 1.2), taken in effective
      tokens D_eff so a batch above the noise scale costs data (McCandlish et al. 2018 Eq. 2.11).

    `scale` = (B0, D0, D_eff0): the sweep's geometric means, so the parameters are well conditioned.
    """
    log_a, alpha, log_c, k0, kb, kd = params
    b0, d0, e0 = scale
    log_opt = k0 + kb * np.log(np.asarray(batch) / b0) + kd * np.log(np.asarray(tokens) / d0)
    return (np.exp(log_a) * np.power(np.asarray(eff_tokens) / e0, -alpha)
            + np.exp(log_c) * (np.log(lr) - log_opt) ** 2)


@dataclass
class LossFit:
    params: np.ndarray
    scale: tuple
    noise: NoiseLaw
    residual_rms: float

    def loss(self, lr, stages: list, tokens: float) -> float:
        eff = effective_tokens(stages, tokens, self.noise)
        return float(predicted_loss(self.params, lr, mean_log_batch(stages, tokens), eff, tokens, self.scale))

    def best_lr(self, stages: list, tokens: float) -> float:
        _, _, _, k0, kb, kd = self.params
        b0, d0, _ = self.scale
        return float(math.exp(k0 + kb * math.log(mean_log_batch(stages, tokens) / b0) + kd * math.log(tokens / d0)))


def check_sweep(runs: list[SweepRun]) -> list[SweepRun]:
    """The runs usable for the fit; one ConfigError saying what to add when they cannot determine it."""
    kept = [r for r in runs if not r.diverged]
    lrs = sorted({r.lr for r in kept})
    batches = sorted({round(r.batch) for r in kept})
    budgets = sorted({r.tokens for r in kept})
    note = f" ({len(runs) - len(kept)} diverged run(s) excluded)" if len(kept) < len(runs) else ""
    if not kept:
        lowest = min(r.lr for r in runs)
        raise ConfigError(f"all {len(runs)} sweep runs diverged or failed (listed above): add lower learning rates "
                          f"(e.g. --lrs {lowest / 9:g},{lowest / 3:g}) where they diverged, see train.log where "
                          f"training failed")
    if len(batches) < MIN_BATCHES:
        raise ConfigError(f"the sweep has one batch size ({batches[0]} tokens){note}; add runs at a second batch "
                          f"size (e.g. --batches {batches[0]},{2 * batches[0]}) so the LR law can follow the batch")
    if len(budgets) < MIN_BUDGETS:
        raise ConfigError(f"the sweep has one token budget ({budgets[0]} tokens){note}; add runs at a second "
                          f"budget (e.g. --tokens {budgets[0]},{2 * budgets[0]}) so the law can extrapolate in tokens")
    if len(lrs) < MIN_LRS:
        raise ConfigError(f"the sweep has {len(lrs)} usable learning rate(s){note}; give at least {MIN_LRS} "
                          f"(e.g. --lrs spaced 3x apart around the recipe's) so the loss-vs-LR parabola is determined")
    if len(kept) < MIN_POINTS:
        raise ConfigError(f"the sweep has {len(kept)} usable runs{note}; the fit has {len(PARAM_NAMES)} parameters and "
                          f"needs at least {MIN_POINTS}: add learning rates, batch sizes or budgets")
    return kept


def _fit_params(lr, batch, eff, tokens, loss, scale, start=None):
    from scipy.optimize import least_squares

    if start is None:
        best = int(np.argmin(loss))
        start = np.array([math.log(max(float(np.min(loss)), 1e-6)), 0.1, math.log(0.05),
                          math.log(lr[best]), 0.0, 0.0])
    result = least_squares(lambda p: predicted_loss(p, lr, batch, eff, tokens, scale) - loss, start,
                           method="lm", max_nfev=20000)
    return result.x


def fit_sweep(runs: list[SweepRun], noise: NoiseLaw) -> LossFit:
    """Fit the loss law to the usable runs (check_sweep first) under the noise bound `noise`."""
    lr = np.array([r.lr for r in runs])
    batch = np.array([r.batch for r in runs])
    tokens = np.array([float(r.tokens) for r in runs])
    eff = np.array([effective_tokens(r.stages, r.tokens, noise) for r in runs])
    loss = np.array([r.final_loss for r in runs])
    scale = (float(np.exp(np.log(batch).mean())), float(np.exp(np.log(tokens).mean())),
             float(np.exp(np.log(eff).mean())))
    params = _fit_params(lr, batch, eff, tokens, loss, scale)
    residual = predicted_loss(params, lr, batch, eff, tokens, scale) - loss
    return LossFit(params, scale, noise, float(np.sqrt(np.mean(residual ** 2))))


# ------------------------------------------------------------------ the constrained choice
def batch_schedule(noise: NoiseLaw, candidates: list[int], tokens: float, first_tokens: float) -> list:
    """Stages [(start_tokens, batch), ...] giving each step the smallest candidate batch at or above B_crit at the
    tokens seen before it (from `first_tokens`, where the noise law starts; the largest candidate where the bound
    exceeds them all). Walked step by step, so every switch is at a step boundary, as the trainer makes it; the
    batch grows with a growing noise scale (Intern-S1's batch warmup) and shrinks with a shrinking one."""
    candidates = sorted(candidates)
    stages, consumed = [], 0
    while consumed < tokens:
        bound = noise(max(consumed, first_tokens))
        batch = next((b for b in candidates if b >= bound), candidates[-1])
        if not stages or stages[-1][1] != batch:
            stages.append((consumed, batch))
        consumed += batch
    return stages


@dataclass
class Recommendation:
    lr: float
    stages: list
    tokens: float
    loss: float
    loss_interval: tuple = (math.nan, math.nan)
    lr_interval: tuple = (math.nan, math.nan)
    bootstrap_samples: int = 0


def recommend(fit: LossFit, candidates: list[int], tokens: float, first_tokens: float) -> Recommendation:
    stages = batch_schedule(fit.noise, candidates, tokens, first_tokens)
    lr = fit.best_lr(stages, tokens)
    return Recommendation(lr, stages, tokens, fit.loss(lr, stages, tokens))


def bootstrap(runs: list[SweepRun], fit: LossFit, candidates: list[int], tokens: float, first_tokens: float,
              samples: int = 200, seed: int = 0) -> Recommendation:
    """The recommendation with 68% intervals from a residual bootstrap (refit on fitted values + resampled
    residuals, so every replicate keeps the sweep's design: all LRs, batches and budgets)."""
    best = recommend(fit, candidates, tokens, first_tokens)
    lr = np.array([r.lr for r in runs])
    batch = np.array([r.batch for r in runs])
    toks = np.array([float(r.tokens) for r in runs])
    eff = np.array([effective_tokens(r.stages, r.tokens, fit.noise) for r in runs])
    fitted = predicted_loss(fit.params, lr, batch, eff, toks, fit.scale)
    residual = np.array([r.final_loss for r in runs]) - fitted
    residual *= math.sqrt(len(runs) / max(1, len(runs) - len(PARAM_NAMES)))  # undo the fit's shrinkage
    rng = np.random.default_rng(seed)
    losses, lrs = [], []
    for _ in range(samples):
        params = _fit_params(lr, batch, eff, toks, fitted + rng.choice(residual, len(runs)), fit.scale, fit.params)
        replicate = LossFit(params, fit.scale, fit.noise, fit.residual_rms)
        chosen = replicate.best_lr(best.stages, tokens)
        lrs.append(chosen)
        losses.append(replicate.loss(chosen, best.stages, tokens))
    best.loss_interval = tuple(float(x) for x in np.percentile(losses, [16, 84]))
    best.lr_interval = tuple(float(x) for x in np.percentile(lrs, [16, 84]))
    best.bootstrap_samples = samples
    return best
