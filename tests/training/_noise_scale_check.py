"""Brute-force gradient noise scale of the first global batch from per-sample gradients, beside the trainer's.

Run as `python tests/training/_noise_scale_check.py --config RECIPE overrides...` (single process, micro-batches of
one sequence); prints one JSON line {"brute": {...}, "trainer": {...}}.
"""
import argparse
import json

import torch
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

from megatron_s1.config import load_config
from megatron_s1.training.loop import Trainer


def flat_grads(model) -> torch.Tensor:
    return torch.cat([b.grad_data.clone() for b in model.buffers + model.expert_parallel_buffers])


def per_sample_gradients(trainer: Trainer) -> tuple[torch.Tensor, int]:
    """Gradient of each sequence's mean token loss (one backward per sequence), and the tokens per sequence."""
    model, cfg = trainer.model[0], trainer.cfg
    global_batch = trainer.batch_schedule.global_batch_size(0)
    grads, tokens = [], None
    MoEAuxLossAutoScaler.set_loss_scale(torch.ones(1))  # as the schedule sets it (no loss scaling in fp32)
    for batch in trainer.task.microbatches(trainer.train_ds, 0, global_batch, 0, 1):
        model.zero_grad_buffer()
        output, loss_func = trainer.task.forward_step(batch, model)
        loss_sum, num_tokens, _ = loss_func(output)
        loss_sum.backward()
        tokens = int(num_tokens)
        grads.append(flat_grads(model) / tokens)
    assert len(grads) == global_batch and cfg.data.micro_batch_size == 1
    return torch.stack(grads).double(), tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    trainer = Trainer(load_config(args.config, args.overrides))
    trainer.train_ds, trainer.valid_ds, _ = trainer._datasets()
    grads, tokens = per_sample_gradients(trainer)
    n = grads.shape[0]
    mean = grads.mean(dim=0)
    # Textbook unbiased per-sequence estimates: sample covariance trace, and |mean|^2 minus its variance.
    trace_per_sequence = float(((grads - mean) ** 2).sum() / (n - 1))
    grad_sq = float((mean ** 2).sum()) - trace_per_sequence / n
    result = trainer.train_step()
    print(json.dumps({
        "brute": {"grad_sq": grad_sq, "trace_per_token": trace_per_sequence * tokens, "grad_norm": float(mean.norm())},
        "trainer": {"grad_sq": result["noise_grad_sq_step"], "trace_per_token": result["noise_trace_step"],
                    "grad_norm": result["grad_norm"]},
    }))


if __name__ == "__main__":
    main()
