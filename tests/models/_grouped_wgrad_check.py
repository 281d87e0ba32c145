"""Checks of models/grouped_wgrad.py under the Triton interpreter (CPU, fp32); run by test_grouped_wgrad.py."""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before the kernel is defined

import torch  # noqa: E402
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig  # noqa: E402

from megatron_s1.config import load_config  # noqa: E402
from megatron_s1.models.grouped_wgrad import grouped_wgrad_into  # noqa: E402
from megatron_s1.models.language import build_language_model, build_transformer_config  # noqa: E402
from megatron_s1.models.precision import enable_fused_wgrad_accumulation  # noqa: E402
from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything  # noqa


def kernel():
    # Hand case: one expert, rows [1, 2] and [3, 4] of dy (N=1) and x (K=2): dW = 1*[1,2] + 3*[3,4] ... plus the
    # 0.5 already in the buffer.
    out = torch.full((1, 1, 2), 0.5)
    grouped_wgrad_into(out, torch.tensor([[1.0], [3.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
                       torch.tensor([2], dtype=torch.int32))
    torch.testing.assert_close(out, torch.tensor([[[10.5, 14.5]]]), rtol=0, atol=0)
    # Random: partial tiles in N and K, an empty expert, an expert spanning several token blocks, trailing rows
    # past the last offset (ignored, as grouped_mm ignores them).
    g = torch.Generator().manual_seed(0)
    counts = [5, 0, 150, 3]
    n, k, rows = 40, 136, sum(counts) + 7
    dy, x = torch.randn(rows, n, generator=g), torch.randn(rows, k, generator=g)
    out = torch.randn(len(counts), n, k, generator=g)
    ref = out.clone()
    start = 0
    for e, c in enumerate(counts):
        ref[e] += dy[start:start + c].t() @ x[start:start + c]
        start += c
    grouped_wgrad_into(out, dy, x, torch.tensor(counts).cumsum(0).to(torch.int32))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for bad in (out.double(), out.transpose(1, 2)):
        try:
            grouped_wgrad_into(bad, dy, x, torch.tensor(counts).cumsum(0).to(torch.int32))
        except ValueError:
            continue
        raise AssertionError("a non-contiguous or non-fp32 output must be refused")


def _ddp_model(seed):
    cfg = load_config(None, ["model.preset=tiny-moe", "model.params_dtype=fp32", "model.moe_experts=grouped_mm"])
    initialize_model_parallel(cfg)
    seed_everything(seed)
    tconfig = build_transformer_config(cfg)
    model = build_language_model(cfg, tconfig, pre_process=True, post_process=True)
    ddp = DistributedDataParallel(config=tconfig, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True),
                                  module=model)
    return cfg, ddp


def model():
    """Two micro-batches through Megatron DDP: fused accumulation gives the same main_grad as autograd + DDP's add,
    and the experts' weights hand autograd no gradient."""
    init_distributed()
    grads = {}
    for fused in (False, True):
        cfg, ddp = _ddp_model(seed=0)
        switched = enable_fused_wgrad_accumulation(ddp, te_linears=False) if fused else 0
        assert switched == (cfg.model.num_layers if fused else 0), switched
        ddp.zero_grad_buffer()
        g = torch.Generator().manual_seed(3)
        for _ in range(2):
            tokens = torch.randint(0, cfg.model.vocab_size, (2, 32), generator=g)
            positions = torch.arange(32).expand(2, 32)
            causal = torch.triu(torch.ones(32, 32, dtype=torch.bool), 1)[None, None]
            ddp(tokens, positions, causal, labels=tokens).mean().backward()
        grads[fused] = {n: p.main_grad.clone() for n, p in ddp.module.named_parameters()}
        experts = [n for n in grads[fused] if ".experts.linear_fc" in n]
        assert len(experts) == 2 * cfg.model.num_layers, experts
        for n, p in ddp.module.named_parameters():
            if n in experts:
                assert p.grad is None and getattr(p, "grad_added_to_main_grad", False) == fused, n
    for n, ref in grads[False].items():
        assert ref.abs().sum() > 0, n
        torch.testing.assert_close(grads[True][n], ref, rtol=1e-5, atol=1e-6, msg=n)


if __name__ == "__main__":
    {"kernel": kernel, "model": model}[sys.argv[1]]()
    print("ok")
