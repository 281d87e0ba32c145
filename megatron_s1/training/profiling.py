"""`train.profile_steps=[first, last]`: record those steps with torch.profiler (CPU ops + CUDA kernels).

Writes, per rank, run.dir/profile/trace_rank{R}.json (open in Perfetto / chrome://tracing),
kernels_rank{R}.txt (ops and kernels sorted by device time, then by CPU time) and summary_rank{R}.json (where the
time of a step goes: wall time, time with at least one GPU kernel running, the rest = host-bound gaps, kernel time
per category and the top kernels, all per step; `summarize_trace`) when the last step ends.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import torch

from megatron_s1.config.schema import ConfigError


# Kernel categories of the summary: (category, lower-case fragments of the kernel name); the first match wins, the
# rest is "other". A naming heuristic (cuBLAS nvjet / CUTLASS / cuDNN / TE / ATen kernel names as of torch 2.11 and
# TE 2.20), so read the top-kernel list next to it.
KERNEL_CATEGORIES = (
    ("communication", ("nccl",)),
    ("optimizer", ("multi_tensor_apply", "adam")),
    ("attention", ("flash", "fmha", "sdpa", "attn")),
    ("grouped_gemm", ("grouped", "groupproblem")),
    ("gemm", ("nvjet", "gemm", "cutlass", "cublas", "xmma", "wgmma")),
    ("moe_dispatch", ("permute", "sort_chunks", "chunk_sort", "topk")),
    ("memcpy_memset", ("memcpy", "memset")),
    ("copy_cast", ("copy_kernel", "catarray")),
    ("normalization", ("norm",)),
    ("cross_entropy", ("cross_entropy", "crossentropy", "_row_stats_kernel")),
    ("elementwise", ("elementwise", "reduce", "softmax", "fill")),
)
# Chrome-trace categories of device work (Kineto).
_DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def kernel_category(name: str) -> str:
    low = name.lower()
    for category, fragments in KERNEL_CATEGORIES:
        if any(f in low for f in fragments):
            return category
    return "other"


def busy_time(intervals: list) -> float:
    """Length of the union of [start, end) intervals (kernels on several streams overlap: counted once)."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def summarize_trace(trace: dict, steps: int, wall_s: float, top: int = 15) -> dict:
    """Per-step breakdown of a Chrome trace (torch.profiler's export) of ``steps`` steps that took ``wall_s``:
    device busy time (union of kernel / memcpy / memset intervals), idle = wall - busy (the GPU waits for the host),
    kernel time per `kernel_category` (summed over streams, so it can exceed busy) and the ``top`` kernels."""
    events = [e for e in trace.get("traceEvents", []) if e.get("cat") in _DEVICE_CATEGORIES and "dur" in e]
    per_step = 1.0 / max(steps, 1)
    wall_ms = wall_s * 1e3 * per_step
    busy_ms = busy_time([(e["ts"], e["ts"] + e["dur"]) for e in events]) / 1e3 * per_step
    by_category, by_name = {}, {}
    for e in events:
        ms = e["dur"] / 1e3 * per_step
        category = kernel_category(e.get("name", ""))
        by_category[category] = by_category.get(category, 0.0) + ms
        by_name[e.get("name", "")] = by_name.get(e.get("name", ""), 0.0) + ms
    top_kernels = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    return {"steps": steps, "wall_ms_per_step": wall_ms, "device_busy_ms_per_step": busy_ms,
            "device_idle_ms_per_step": max(wall_ms - busy_ms, 0.0) if events else None,
            "device_busy_frac": busy_ms / wall_ms if events and wall_ms > 0 else None,
            "kernel_ms_per_step": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
            "top_kernels_ms_per_step": [[name[:160], ms] for name, ms in top_kernels]}


def summary_line(summary: dict, window: tuple) -> str:
    head = f"[profile] steps {window[0]}-{window[1]}: {summary['wall_ms_per_step']:.1f} ms per step"
    if summary["device_busy_frac"] is None:
        return head + " (no GPU kernels recorded)"
    cats = ", ".join(f"{k} {v:.1f}" for k, v in list(summary["kernel_ms_per_step"].items())[:6])
    return (f"{head}, GPU busy {summary['device_busy_ms_per_step']:.1f} ms ({summary['device_busy_frac']:.0%}), "
            f"idle {summary['device_idle_ms_per_step']:.1f} ms; kernel ms: {cats}")


class StepProfiler:
    def __init__(self, steps: Optional[list], run_dir: str, rank: int):
        self.window = None
        if steps is not None:
            if len(steps) != 2 or not all(isinstance(x, int) for x in steps) or not 1 <= steps[0] <= steps[1]:
                raise ConfigError(f"train.profile_steps must be [first, last] with 1 <= first <= last, got {steps!r}")
            self.window = (steps[0], steps[1])
        self.out_dir = os.path.join(run_dir, "profile")
        self.rank = rank
        self._prof = None
        self._start = 0.0

    def before_step(self, step: int) -> None:
        """step: the 1-based number of the step about to run."""
        if self.window is None or step != self.window[0]:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(activities=activities, record_shapes=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()
        self._prof.__enter__()

    def after_step(self, step: int) -> Optional[dict]:
        """Ends the window after its last step: writes the files, returns the summary (None otherwise)."""
        if self._prof is None or step != self.window[1]:
            return None
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall_s = time.perf_counter() - self._start
        self._prof.__exit__(None, None, None)
        os.makedirs(self.out_dir, exist_ok=True)
        trace_path = os.path.join(self.out_dir, f"trace_rank{self.rank}.json")
        self._prof.export_chrome_trace(trace_path)
        with open(trace_path, encoding="utf-8") as f:
            summary = summarize_trace(json.load(f), self.window[1] - self.window[0] + 1, wall_s)
        with open(os.path.join(self.out_dir, f"summary_rank{self.rank}.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
        events = self._prof.key_averages()
        with open(os.path.join(self.out_dir, f"kernels_rank{self.rank}.txt"), "w", encoding="utf-8") as f:
            if torch.cuda.is_available():
                f.write(events.table(sort_by="self_device_time_total", row_limit=60, max_name_column_width=90))
                f.write("\n")
            f.write(events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=90))
        self._prof = None
        return summary
