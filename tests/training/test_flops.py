from megatron_s1.config import load_config
from megatron_s1.training.flops import forward_flops_per_token, peak_tflops, training_flops_per_token


def test_dense_flops_hand_computed():
    m = load_config(None, ["model.preset=tiny-dense"]).model
    # h=64, d=16, nq=4, nkv=2, f=128, V=2048, L=2, s=128
    proj = 2 * 64 * (4 * 16 + 2 * 2 * 16) + 2 * 4 * 16 * 64  # 16384 + 8192 = 24576
    core = 2 * 2 * 4 * 16 * 64  # causal average context s/2 = 64 -> 16384
    mlp = 2 * 3 * 64 * 128  # 49152
    head = 2 * 64 * 2048  # 262144
    expected = 2 * (proj + core + mlp) + head
    assert expected == 442368
    assert forward_flops_per_token(m, 128) == expected
    assert training_flops_per_token(m, 128) == 3 * expected


def test_moe_flops_count_only_active_experts():
    m = load_config(None, ["model.preset=tiny-moe"]).model
    dense = load_config(None, ["model.preset=tiny-dense"]).model
    # MoE MLP: router 2*64*4 = 512, top-2 experts of ffn 64: 2 * 2*3*64*64 = 49152; per layer 49664
    moe_mlp, dense_mlp = 512 + 49152, 2 * 3 * 64 * 128
    assert forward_flops_per_token(m, 128) - forward_flops_per_token(dense, 128) == 2 * (moe_mlp - dense_mlp)


def test_peak_lookup():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H200", "fp8") == 1979.0
    assert peak_tflops("cpu", "bf16") is None
