"""Per-step metrics: console line, metrics.jsonl, TensorBoard, and a progress bar on terminals."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

from megatron_s1.atomic import atomic_open


# Console formats per metric (metrics.jsonl keeps full precision): counts and rates as integers, losses to 4 decimals.
CONSOLE_FORMATS = {"loss": "{:.4f}", "grad_norm": "{:.4f}", "lr": "{:.3e}", "tokens_per_s": "{:.0f}",
                   "rollout_tokens_per_s": "{:.0f}", "tflops_per_gpu": "{:.3g}", "mfu": "{:.1%}",
                   "peak_mem_gb": "{:.2f}", "moe_aux_loss": "{:.4f}", "expert_imbalance_max": "{:.3f}"}


def _fmt(value, key: str = "") -> str:
    if isinstance(value, float):
        if key in CONSOLE_FORMATS:
            return CONSOLE_FORMATS[key].format(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def truncate_jsonl_after(path: str, step: int) -> None:
    """Drop the records of steps after the resume point from a metrics jsonl (they are recomputed, identically);
    a torn last line (killed mid-write) goes too."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if line.strip() and json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue
    with atomic_open(path) as f:
        f.writelines(kept)


def console_line(kind: str, record: dict, keys) -> str:
    """`[kind] key value | ...` for the keys present in the record."""
    return f"[{kind}] " + " | ".join(f"{k} {_fmt(record[k], k)}" for k in keys if k in record)


class MetricsLogger:
    """Only rank 0 writes. `metrics.jsonl` gets one JSON object per logged step (append-only, so a resumed
    run continues the same file; entries for steps re-run after a crash are dropped on resume);
    `valid_metrics.jsonl` likewise gets the validation losses."""

    CONSOLE_KEYS = ("step", "consumed_tokens", "loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu",
                    "mfu", "peak_mem_gb", "skipped_steps", "moe_aux_loss", "expert_imbalance_max",
                    "critical_batch_tokens")

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, progress_bar: str, total_steps: int,
                 start_step: int):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.paths = {"train": self.path, "valid": os.path.join(run_dir, "valid_metrics.jsonl")}
        self.writer = None
        self.bar = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        for path in self.paths.values():
            truncate_jsonl_after(path, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=start_step + 1)
        show_bar = progress_bar == "on" or (progress_bar == "auto" and sys.stdout.isatty())
        if show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, record: dict, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {k: v for k, v in record.items() if v is not None}
        if kind in self.paths:
            with open(self.paths[kind], "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, record["step"])
            self.writer.flush()
        keys = self.CONSOLE_KEYS if kind == "train" else tuple(record)
        line = console_line(kind, record, keys)
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def event(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def expert_imbalance(tokens_per_expert) -> list[float]:
    """max/mean of tokens routed to each expert, per layer (1.0 = perfectly balanced)."""
    counts = tokens_per_expert.float()
    means = counts.mean(dim=-1).clamp_min(1e-9)
    return (counts.max(dim=-1).values / means).tolist()


class PhaseMemory:
    """Peak CUDA memory per phase of a step (RL: rollout / log-probs / update): ``mark(name)`` ends a phase, records
    its peak and the memory still allocated at its end, and starts the next one. Records nothing without CUDA."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.record: dict = {}
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def mark(self, name: str) -> None:
        if not self.cuda:
            return
        import torch

        self.record[f"{name}_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.record[f"{name}_end_gb"] = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()


def memory_peak_gb() -> Optional[float]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
