"""GPU check of model.moe_experts=grouped_mm_fp8's GEMMs: output, input grad and weight grad of one FP8 grouped linear
vs the BF16 grouped_mm, with uneven (and one empty) expert groups; prints relative errors, exit 1 above 5%."""
import sys

import torch

from megatron_s1.models import experts

torch.manual_seed(0)
E, K, N = 8, 2048, 1536
counts = torch.tensor([0, 17, 300, 5, 1024, 64, 3, 700], device="cuda")
offs = torch.cumsum(counts, 0, dtype=torch.int32)
x = torch.randn(int(counts.sum()), K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
w = (torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
dy = torch.randn(x.shape[0], N, device="cuda", dtype=torch.bfloat16)
ref = experts._grouped_mm(x, w.transpose(1, 2), offs=offs)
gx_ref, gw_ref = torch.autograd.grad(ref, (x, w), dy)
out = experts._FP8GroupedLinear.apply(x, w, offs, experts._FP8WeightCache())
gx, gw = torch.autograd.grad(out, (x, w), dy)
rel = lambda a, b: float((a.float() - b.float()).norm() / b.float().norm())  # noqa: E731
errs = {"out": rel(out, ref), "dgrad": rel(gx, gx_ref), "wgrad": rel(gw, gw_ref)}
print("fp8 grouped linear rel. errors:", {k: f"{v:.4f}" for k, v in errs.items()})
sys.exit(0 if all(v < 0.05 for v in errs.values()) else 1)
