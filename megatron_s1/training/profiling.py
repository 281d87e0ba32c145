"""`train.profile_steps=[first, last]`: record those steps with torch.profiler (CPU ops + CUDA kernels).

Writes, per rank, run.dir/profile/trace_rank{R}.json (open in Perfetto / chrome://tracing) and
kernels_rank{R}.txt (ops and kernels sorted by device time, then by CPU time) when the last step ends.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from megatron_s1.config.schema import ConfigError


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

    def before_step(self, step: int) -> None:
        """step: the 1-based number of the step about to run."""
        if self.window is None or step != self.window[0]:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(activities=activities, record_shapes=False)
        self._prof.__enter__()

    def after_step(self, step: int) -> None:
        if self._prof is None or step != self.window[1]:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._prof.__exit__(None, None, None)
        os.makedirs(self.out_dir, exist_ok=True)
        self._prof.export_chrome_trace(os.path.join(self.out_dir, f"trace_rank{self.rank}.json"))
        events = self._prof.key_averages()
        with open(os.path.join(self.out_dir, f"kernels_rank{self.rank}.txt"), "w", encoding="utf-8") as f:
            if torch.cuda.is_available():
                f.write(events.table(sort_by="self_device_time_total", row_limit=60, max_name_column_width=90))
                f.write("\n")
            f.write(events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=90))
        self._prof = None
