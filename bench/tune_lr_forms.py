"""Is the loss law's form what limits `tune lr`'s accuracy? Alternatives fitted to the same sweep, compared.

Reads a finished sweep (`megatron-s1 tune lr ... --sweep-dir DIR --holdout-tokens N`) and fits, to the same runs,
the documented law (`megatron_s1.training.lr_tuning.predicted_loss`) and variants of it, each with the fitted noise
bound and with a constant one (the median logged critical batch). Per variant: the rms residual in sample, the
leave-one-out rms (each run predicted by a fit without it) and the relative error on the held-out runs
(`DIR/holdout_*`, never fitted): mean, rms, largest.

    python bench/tune_lr_forms.py runs/lr_sweep
"""
from __future__ import annotations

import argparse
import glob
import math
import os

import numpy as np
from scipy.optimize import least_squares

from megatron_s1.training import lr_tuning as lt


def _basin(p, lr, batch, tokens, scale):
    b0, d0, _ = scale
    log_opt = p[3] + p[4] * np.log(batch / b0) + p[5] * np.log(tokens / d0)
    return (np.log(lr) - log_opt) ** 2


# name -> (loss(p, lr, batch, tokens, eff, scale), extra parameters beyond the documented six)
VARIANTS = {
    "documented: A (D_eff/D0)^-alpha + C (ln lr - ln lr*)^2":
        (lambda p, lr, b, d, e, sc: lt.predicted_loss(p[:6], lr, b, e, d, sc), 0),
    "no D_eff: A (D/D0)^-alpha (B/B0)^beta + basin":
        (lambda p, lr, b, d, e, sc: np.exp(p[0]) * (d / sc[1]) ** -p[1] * (b / sc[0]) ** p[6]
         + np.exp(p[2]) * _basin(p, lr, b, d, sc), 1),
    "basin width C (D/D0)^c":
        (lambda p, lr, b, d, e, sc: np.exp(p[0]) * (e / sc[2]) ** -p[1]
         + np.exp(p[2]) * (d / sc[1]) ** p[6] * _basin(p, lr, b, d, sc), 1),
    "log-linear data law: a - b ln(D_eff/D0) + basin":
        (lambda p, lr, b, d, e, sc: p[0] - p[1] * np.log(e / sc[2]) + np.exp(p[2]) * _basin(p, lr, b, d, sc), 0),
}


def _columns(runs, noise):
    return (np.array([r.lr for r in runs]), np.array([r.batch for r in runs]),
            np.array([float(r.tokens) for r in runs]),
            np.array([lt.effective_tokens(r.stages, r.tokens, noise) for r in runs]),
            np.array([r.final_loss for r in runs]))


def _fit(loss, extra, runs, noise, linear_data_law):
    lr, b, d, e, y = _columns(runs, noise)
    scale = tuple(float(np.exp(np.log(x).mean())) for x in (b, d, e))
    start = [y.min() if linear_data_law else math.log(y.min()), 0.1, math.log(0.05),
             math.log(lr[int(np.argmin(y))]), 0.0, 0.0] + [0.0] * extra
    p = least_squares(lambda q: loss(q, lr, b, d, e, scale) - y, start, method="lm", max_nfev=20000).x
    return lambda others: loss(p, *_columns(others, noise)[:4], scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir")
    args = ap.parse_args()
    runs = lt.check_sweep([lt.read_run(d) for d in lt.find_runs([args.sweep_dir])])
    held = [r for r in (lt.read_run(d) for d in sorted(glob.glob(os.path.join(args.sweep_dir, "holdout_*"))))
            if not r.diverged]
    measured = np.array([r.final_loss for r in runs])
    held_measured = np.array([r.final_loss for r in held])
    bounds = {"fitted B_crit(t)": lt.fit_noise_law(runs),
              "constant B_crit": lt.NoiseLaw(float(np.median([b for r in runs for _, b in r.critical])), 0.0)}
    print(f"{len(runs)} sweep runs, {len(held)} held-out runs\n")
    print("| form | noise bound | rms in sample | leave-one-out rms | held-out error: mean / rms / largest |")
    print("|---|---|---|---|---|")
    for name, (loss, extra) in VARIANTS.items():
        for bound_name, noise in bounds.items():
            linear = name.startswith("log-linear")
            predict = _fit(loss, extra, runs, noise, linear)
            in_sample = np.sqrt(np.mean((predict(runs) - measured) ** 2))
            loo = [float(_fit(loss, extra, runs[:i] + runs[i + 1:], noise, linear)([runs[i]])[0]) - runs[i].final_loss
                   for i in range(len(runs))]
            cells = "–"
            if held:
                predicted = predict(held)
                error = 100 * (held_measured - predicted) / predicted
                cells = f"{error.mean():+.2f}% / {np.sqrt(np.mean(error ** 2)):.2f}% / {error[np.argmax(abs(error))]:+.1f}%"
            print(f"| {name} | {bound_name} | {in_sample:.3f} | {np.sqrt(np.mean(np.square(loo))):.3f} | {cells} |")


if __name__ == "__main__":
    main()
