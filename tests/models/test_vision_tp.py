"""TP=2 InternViT + projector forward (and input gradient) equals TP=1, with head padding (3 heads -> 4).

The reference runs in the test process (TP=1); two gloo processes then load the padded, sharded weights
(`shard_vision_state_dict`) and compare. Run as `python -m tests.models.test_vision_tp DIR` for the worker.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from tests.conftest import REPO, free_port


def _setup(tp: int):
    from megatron.core import parallel_state

    from megatron_s1.training.distributed import init_distributed

    init_distributed()
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)


def _build(tp: int):
    from megatron.core.transformer import TransformerConfig

    from megatron_s1.config.schema import load_config
    from megatron_s1.models.vision.internvit import InternViTModel, VisionProjection, build_vision_transformer_config

    cfg = load_config(None, ["vision.preset=tiny-vit"])
    llm = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, tensor_model_parallel_size=tp,
                            use_cpu_initialization=True, params_dtype=torch.float32)
    vconf = build_vision_transformer_config(cfg.vision, llm)
    vit = InternViTModel(vconf, cfg.vision)
    proj = VisionProjection(vconf, cfg.vision.hidden_size * 4, 64)
    return cfg, torch.nn.ModuleDict({"vision_model": vit, "vision_projection": proj})


def _forward(model, pixels):
    from megatron_s1.models.vision.internvit import vision_tokens

    feats = vision_tokens(model["vision_model"](pixels), 0.5)
    return model["vision_projection"](feats)


def worker(path: str) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_s1.models.vision.internvit import shard_vision_state_dict

    _setup(2)
    ref = torch.load(path)
    cfg, model = _build(2)
    shard = shard_vision_state_dict(ref["state"], cfg.vision.num_attention_heads,
                                    cfg.vision.hidden_size // cfg.vision.num_attention_heads,
                                    parallel_state.get_tensor_model_parallel_rank(), 2)
    missing, unexpected = model.load_state_dict(shard, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    pixels = ref["pixels"].clone().requires_grad_(True)
    out = _forward(model, pixels)
    (out * ref["probe"]).sum().backward()
    torch.testing.assert_close(out, ref["out"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pixels.grad, ref["grad"], rtol=1e-4, atol=1e-6)
    dist.barrier()
    print("TP2 OK", flush=True)


def test_tp2_vision_forward_equals_tp1(tmp_path):
    _setup(1)
    torch.manual_seed(0)
    cfg, model = _build(1)
    with torch.no_grad():  # non-trivial layer scale / norms so every path matters
        for name, p in model.named_parameters():
            if name.endswith(("ls1", "ls2")) or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    pixels = torch.randn(3, 3, 56, 56, requires_grad=True)
    out = _forward(model, pixels)
    probe = torch.randn_like(out)
    (out * probe).sum().backward()
    assert out.shape == (3, 4, 64)
    path = str(tmp_path / "ref.pt")
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    torch.save({"state": state, "pixels": pixels.detach(), "out": out.detach(), "probe": probe,
                "grad": pixels.grad}, path)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    env.pop("MASTER_ADDR", None)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "torch.distributed.run", "--nproc-per-node=2",
                           f"--master-port={free_port()}", "-m", "tests.models.test_vision_tp", path],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("TP2 OK") == 2


if __name__ == "__main__":
    worker(sys.argv[1])
