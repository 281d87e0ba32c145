"""GPU check of our Triton cross-entropy at the real vocabulary size (151,936), bf16 logits. Skipped without CUDA."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cross_entropy_at_qwen3_vocab_matches_torch():
    from megatron_s1.models.cross_entropy import vocab_parallel_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (3 * torch.randn(1024, 2, 151936, device="cuda", generator=g)).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 151936, (1024, 2), device="cuda", generator=g)
    grad_loss = torch.rand(1024, 2, device="cuda", generator=g)
    loss = vocab_parallel_cross_entropy(logits, labels)
    (loss * grad_loss).sum().backward()
    z = logits.detach().float().requires_grad_()
    ref = torch.nn.functional.cross_entropy(z.view(-1, 151936), labels.view(-1), reduction="none").view(1024, 2)
    (ref * grad_loss).sum().backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad, z.grad.to(torch.bfloat16), rtol=0, atol=4e-3)
