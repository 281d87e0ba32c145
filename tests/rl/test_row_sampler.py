"""The colocated engine's sampler: one counter-based uniform per (row seed, step), inverse-CDF sampling.
Checked against splitmix64 written with Python integers, for batch invariance and for its distribution."""
import torch

from megatron_s1.rl.rollout import draw_row_seeds, row_uniforms, sample_rows

MASK = (1 << 64) - 1


def splitmix_uniform(seed: int, step: int) -> float:
    """splitmix64 of seed + (step + 1) * 0x9E3779B97F4A7C15 (mod 2^64), top 53 bits as a fraction."""
    z = (seed + (step + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    return (z >> 11) / 2.0 ** 53


def test_uniforms_equal_python_splitmix64():
    seeds = [0, 1, -1, 2 ** 62 + 12345, -(2 ** 63), 987654321987654321]
    for step in (0, 1, 7, 2047):
        got = row_uniforms(torch.tensor(seeds), step).tolist()
        want = [splitmix_uniform(s & MASK, step) for s in seeds]
        assert got == want
    # hand value: seed 0, step 0 is splitmix64's first output for state 0 (0xE220A8397B1DCDAF)
    assert row_uniforms(torch.tensor([0]), 0).item() == (0xE220A8397B1DCDAF >> 11) / 2.0 ** 53


def test_inverse_cdf_by_hand_and_zero_probability_never_chosen():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]])
    for seed in range(200):
        u = splitmix_uniform(seed, 3)
        want = 0 if u < 0.1 else 2 if u < 0.7 else 3
        assert sample_rows(probs, torch.tensor([seed]), 3).item() == want
    one_hot = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    assert all(sample_rows(one_hot, torch.tensor([s]), 0).item() == 2 for s in range(50))


def test_a_row_samples_the_same_token_in_any_batch():
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(12, 50, generator=gen), -1)
    seeds = torch.tensor(draw_row_seeds(12, gen))
    whole = sample_rows(probs, seeds, 5)
    perm = torch.randperm(12, generator=gen)
    assert torch.equal(sample_rows(probs[perm], seeds[perm], 5), whole[perm])
    assert torch.equal(torch.cat([sample_rows(probs[i:i + 1], seeds[i:i + 1], 5) for i in range(12)]), whole)
    assert not torch.equal(sample_rows(probs, seeds, 6), whole)  # the step enters the draw


def test_frequencies_follow_the_probabilities():
    probs = torch.tensor([0.05, 0.25, 0.0, 0.4, 0.3])
    n = 40000
    seeds = torch.tensor(draw_row_seeds(n, torch.Generator().manual_seed(0)))
    counts = torch.bincount(sample_rows(probs.expand(n, -1), seeds, 0), minlength=5).double()
    expected = probs.double() * n
    assert counts[2] == 0
    keep = expected > 0
    chi2 = (((counts - expected)[keep] ** 2) / expected[keep]).sum().item()
    assert chi2 < 18.5  # chi-square, 3 degrees of freedom, p = 0.0003
