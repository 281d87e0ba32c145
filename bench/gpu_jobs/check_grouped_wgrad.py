"""GPU check + timing of the grouped experts' fused wgrad accumulation (models/grouped_wgrad.py) on the
Qwen3-30B-A3B expert shapes (128 experts, hidden 2048, moe_ffn 768, 4096 tokens x top-8 per micro-batch): the
fused kernel vs grouped_mm's bf16 weight gradient + DDP's `main_grad += grad`. Prints both times (CUDA events,
median of 20) and the fused result's error against an fp64 reference relative to the unfused one's; exit 1 when the
fused result is less exact than the unfused one or any time is missing."""
import statistics
import sys

import torch

from megatron_s1.models.experts import _grouped_mm
from megatron_s1.models.grouped_wgrad import grouped_wgrad_into

torch.manual_seed(0)
E, TOKENS = 128, 4096 * 8
counts = torch.distributions.Dirichlet(torch.full((E,), 2.0)).sample() * TOKENS
counts = counts.round().long()
counts[5] = 0  # one expert without tokens
offs = torch.cumsum(counts, 0).to(device="cuda", dtype=torch.int32)
rows = int(counts.sum())


def timed(fn, reps=20):
    times = []
    for _ in range(reps + 3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times[3:])


ok = True
for name, n, k in (("fc1", 1536, 2048), ("fc2", 2048, 768)):
    dy = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    main_grad = torch.randn(E, n, k, device="cuda", dtype=torch.float32)
    start = main_grad.clone()
    ref = start.double()
    s = 0
    for e, c in enumerate(counts.tolist()):
        ref[e] += dy[s:s + c].double().t() @ x[s:s + c].double()
        s += c
    unfused = start.clone(); unfused.add_(_grouped_mm(dy.t(), x, offs=offs))
    fused = start.clone(); grouped_wgrad_into(fused, dy, x, offs)
    err = lambda t: float((t.double() - ref).norm() / (ref - start.double()).norm())  # noqa: E731
    t_unfused = timed(lambda: main_grad.add_(_grouped_mm(dy.t(), x, offs=offs)))
    t_fused = timed(lambda: grouped_wgrad_into(main_grad, dy, x, offs))
    print(f"{name} [{E}, {n}, {k}] rows {rows}: unfused {t_unfused:.3f} ms, fused {t_fused:.3f} ms "
          f"({t_unfused / t_fused:.2f}x); rel. error unfused {err(unfused):.2e}, fused {err(fused):.2e}")
    ok &= err(fused) <= err(unfused) * 1.01 + 1e-7
sys.exit(0 if ok else 1)
