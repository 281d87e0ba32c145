"""Checks of models/cross_entropy.py under the Triton interpreter (CPU); run by test_cross_entropy.py, alone or under
torchrun with 2 ranks (vocabulary split across a gloo TP group)."""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_s1.models.cross_entropy import vocab_parallel_cross_entropy  # noqa: E402


def reference(logits, labels, grad_loss):
    z = logits.detach().float().requires_grad_()
    loss = torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), labels.reshape(-1), reduction="none")
    (loss * grad_loss.reshape(-1)).sum().backward()
    return loss.view(labels.shape), z.grad


def hand_computed():
    # exp(logits) = [1, 2, 3]: loss = log 6 - log 3 = log 2, grad = softmax - onehot = [1/6, 2/6, 3/6 - 1]
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0]])).requires_grad_()
    loss = vocab_parallel_cross_entropy(logits, torch.tensor([2]))
    loss.sum().backward()
    assert abs(loss.item() - 0.6931472) < 1e-6, loss
    torch.testing.assert_close(logits.grad, torch.tensor([[1 / 6, 2 / 6, -0.5]]), rtol=0, atol=1e-6)


def against_torch(vocab):
    g = torch.Generator().manual_seed(vocab)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (4 * torch.randn(6, 2, vocab, generator=g)).to(dtype).requires_grad_()
        labels = torch.randint(0, vocab, (6, 2), generator=g)
        grad_loss = torch.rand(6, 2, generator=g)
        loss = vocab_parallel_cross_entropy(logits, labels)
        (loss * grad_loss).sum().backward()
        ref_loss, ref_grad = reference(logits, labels, grad_loss)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=2e-6)
        assert logits.grad.dtype == dtype
        # the gradient is computed in fp32 and rounded once to the logits' dtype
        torch.testing.assert_close(logits.grad, ref_grad.to(dtype), rtol=0, atol=1e-6 if dtype == torch.float32
                                   else 4e-3)


def tensor_parallel(vocab):
    """Each rank holds a vocabulary slice: the losses and gradient slices equal the full-vocabulary ones."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(7)
    logits = 4 * torch.randn(5, 3, vocab, generator=g)
    labels = torch.randint(0, vocab, (5, 3), generator=g)
    grad_loss = torch.rand(5, 3, generator=g)
    ref_loss, ref_grad = reference(logits, labels, grad_loss)
    part = vocab // world
    local = logits[..., rank * part:(rank + 1) * part].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, labels, dist.group.WORLD)
    (loss * grad_loss).sum().backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(local.grad, ref_grad.view(5, 3, vocab)[..., rank * part:(rank + 1) * part],
                               rtol=0, atol=1e-6)
    dist.destroy_process_group()


def model_loss():
    """The tiny MoE's per-token loss and output-layer gradient with model.cross_entropy=triton equal Megatron's."""
    from megatron_s1.config import load_config
    from megatron_s1.models.language import build_language_model, build_transformer_config
    from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything

    init_distributed()
    results = []
    for impl in ("megatron", "triton"):
        cfg = load_config(None, ["model.preset=tiny-moe", "model.params_dtype=fp32", f"model.cross_entropy={impl}"])
        initialize_model_parallel(cfg)
        seed_everything(0)
        model = build_language_model(cfg, build_transformer_config(cfg), pre_process=True, post_process=True)
        assert model.cross_entropy_impl == impl
        tokens = torch.randint(0, cfg.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
        causal = torch.triu(torch.ones(24, 24, dtype=torch.bool), 1)[None, None]
        per_token = model(tokens, torch.arange(24).expand(2, 24), causal, labels=tokens.roll(-1, 1))
        per_token.mean().backward()
        results.append((per_token.detach(), model.output_layer.weight.grad.clone()))
    (ref_loss, ref_grad), (loss, grad) = results
    assert loss.shape == (2, 24)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


if __name__ == "__main__":
    if sys.argv[1] == "model":
        model_loss()
    elif sys.argv[1] == "single":
        hand_computed()
        for vocab in (7, 2048, 5000):  # less than, exactly and more than one block, with a partial last block
            against_torch(vocab)
    else:
        tensor_parallel(int(sys.argv[2]))
    print("ok")
