"""Tests of sequence packing and VLBS balancing (megatron_s1.data.packing + its C++ core)."""

import threading
import time

import numpy as np
import pytest

from megatron_s1.data import packing as pk

L = 4096


def lognormal_lengths(n, seed, max_len=L, median=300.0, sigma=1.1):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), sigma, n), 1, 2 * max_len).astype(np.int64)


def assert_valid_packing(lengths, packs, max_len):
    offsets, samples = packs
    assert offsets.dtype == np.int64 and samples.dtype == np.int64
    assert offsets[0] == 0 and offsets[-1] == len(lengths) == len(samples)
    assert np.all(np.diff(offsets) >= 1), "empty pack"
    # Every sample exactly once.
    assert np.array_equal(np.sort(samples), np.arange(len(lengths)))
    # No pack over max_len, computed independently of pack_stats.
    eff = np.minimum(lengths, max_len)
    for p in range(len(offsets) - 1):
        assert eff[samples[offsets[p] : offsets[p + 1]]].sum() <= max_len
    tokens, sum_sq = pk.pack_stats(lengths, packs, max_len)
    assert tokens.max(initial=0) <= max_len
    assert tokens.sum() == eff.sum()
    assert sum_sq.sum() == (eff * eff).sum()


def assert_valid_assignment(assignment, num_packs, dp, k, drop_last):
    steps = num_packs // (dp * k) if drop_last else -(-num_packs // (dp * k))
    assert assignment.shape == (steps, dp, k) and assignment.dtype == np.int64
    ids = assignment[assignment >= 0]
    assert len(np.unique(ids)) == len(ids), "a pack is assigned twice"
    if drop_last:
        assert np.all(assignment >= 0)
    else:
        assert np.array_equal(np.sort(ids), np.arange(num_packs))
        assert np.all(assignment[:-1] >= 0), "padding outside the last step"


# ------------------------------------------------------------------------------------------
# Packing properties.


@pytest.mark.parametrize("seed", [0, 1, 2**64 - 1])
@pytest.mark.parametrize("window", [1, 7, 1000, 1 << 20])
def test_vlbs_packing_is_valid(seed, window):
    lengths = lognormal_lengths(3000, seed % 97)
    lengths[::50] = 0  # empty samples are allowed
    assert_valid_packing(lengths, pk.pack_vlbs(lengths, L, seed=seed, window=window), L)


@pytest.mark.parametrize("shuffle", [True, False])
def test_naive_packing_is_valid(shuffle):
    lengths = lognormal_lengths(3000, 5)
    assert_valid_packing(lengths, pk.pack_naive(lengths, L, seed=3, shuffle=shuffle), L)


def test_naive_without_shuffle_keeps_data_order():
    lengths = lognormal_lengths(500, 6)
    packs = pk.pack_naive(lengths, L, shuffle=False)
    assert np.array_equal(packs.sample_indices, np.arange(500))


def test_best_fit_beats_next_fit_on_pack_count():
    lengths = lognormal_lengths(20000, 7)
    assert pk.pack_vlbs(lengths, L).num_packs < pk.pack_naive(lengths, L).num_packs


def test_hand_computed_packing():
    lengths = np.array([6, 5, 4, 3, 2])
    # Best-fit decreasing: 6 -> new A (room 4); 5 -> new B (room 5); 4 -> A (tightest fit,
    # room 0); 3 -> B (room 2); 2 -> B (room 0).
    packs = pk.pack_vlbs(lengths, 10, shuffle=False)
    got = sorted(tuple(packs.pack(p)) for p in range(packs.num_packs))
    assert got == [(0, 2), (1, 3, 4)]
    # Next-fit closes a pack as soon as the next sample does not fit: [6] [5 4] [3 2].
    naive = pk.pack_naive(lengths, 10, shuffle=False)
    assert naive.pack_offsets.tolist() == [0, 1, 3, 5]


def test_oversize_samples_are_truncated_and_alone():
    lengths = np.array([10, 50, 3, 11, 2])
    packs = pk.pack_vlbs(lengths, 10, shuffle=False)
    assert_valid_packing(lengths, packs, 10)
    for big in (0, 1, 3):  # 10 fills a pack exactly; 50 and 11 are cut to 10
        pack = next(packs.pack(p) for p in range(packs.num_packs) if big in packs.pack(p))
        assert pack.tolist() == [big]
    tokens, sum_sq = pk.pack_stats(lengths, packs, 10)
    assert sorted(tokens.tolist()) == [5, 10, 10, 10]
    assert sum_sq.max() == 100


def test_empty_input():
    for packs in (pk.pack_vlbs([], L), pk.pack_naive([], L)):
        assert packs.pack_offsets.tolist() == [0] and packs.sample_indices.size == 0
        assert packs.num_packs == 0
        assert pk.pack_costs([], packs, L).shape == (0,)
    assert pk.balance_vlbs(np.zeros(0), 4, 2).shape == (0, 4, 2)
    assert pk.balance_round_robin(0, 4, 2, drop_last=False).shape == (0, 4, 2)


def test_results_are_owned_numpy_arrays_without_copies():
    lengths = lognormal_lengths(1000, 8)
    packs = pk.pack_vlbs(lengths, L)
    for arr in (*packs, pk.balance_vlbs(pk.pack_costs(lengths, packs, L), 4)):
        # The array wraps the C++ buffer (base is its owner capsule) instead of a fresh copy.
        assert not arr.flags.owndata and arr.base is not None
        assert arr.flags.c_contiguous and arr.flags.writeable


# ------------------------------------------------------------------------------------------
# Determinism.


def test_same_seed_same_result_different_seed_different():
    lengths = lognormal_lengths(5000, 9)
    for fn in (pk.pack_vlbs, pk.pack_naive):
        a, b, c = fn(lengths, L, seed=11), fn(lengths, L, seed=11), fn(lengths, L, seed=12)
        assert np.array_equal(a.sample_indices, b.sample_indices)
        assert np.array_equal(a.pack_offsets, b.pack_offsets)
        assert not np.array_equal(a.sample_indices, c.sample_indices)
    costs = pk.pack_costs(lengths, pk.pack_vlbs(lengths, L), L)
    x = pk.balance_vlbs(costs, 4, 2, seed=5)
    assert np.array_equal(x, pk.balance_vlbs(costs, 4, 2, seed=5))
    assert not np.array_equal(x, pk.balance_vlbs(costs, 4, 2, seed=6))


def test_pinned_values():
    # Guards the PRNG against silent changes: schedules must survive rebuilds and platforms.
    rng = pk._SplitMix64(0)
    assert [rng.next() for _ in range(2)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    ones = np.ones(10, dtype=np.int64)
    assert pk.pack_naive(ones, 100, seed=0).sample_indices.tolist() == [3, 0, 4, 6, 5, 9, 7, 2, 8, 1]
    assert pk.pack_naive(ones, 100, seed=2**64 - 1).sample_indices.tolist() == \
        [5, 1, 6, 0, 7, 8, 9, 3, 4, 2]


# ------------------------------------------------------------------------------------------
# C++ path == pure-Python reference, element by element.


def random_cases(count, seed):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(0, 200))
        max_len = int(rng.integers(1, 150))
        lengths = rng.integers(0, int(max_len * 1.3) + 1, n)
        yield rng, lengths, max_len, int(rng.integers(0, 2**63))


def test_naive_matches_reference():
    for rng, lengths, max_len, seed in random_cases(60, 100):
        shuffle = bool(rng.integers(0, 2))
        got = pk.pack_naive(lengths, max_len, seed=seed, shuffle=shuffle)
        want = pk.reference_pack_naive(lengths, max_len, seed=seed, shuffle=shuffle)
        assert np.array_equal(got.pack_offsets, want.pack_offsets)
        assert np.array_equal(got.sample_indices, want.sample_indices)
        for dp, k, drop_last in ((1, 1, True), (3, 2, False), (4, 3, True), (7, 1, False)):
            assert np.array_equal(
                pk.balance_round_robin(got.num_packs, dp, k, drop_last=drop_last),
                pk.reference_balance_round_robin(got.num_packs, dp, k, drop_last=drop_last))


def test_vlbs_matches_reference():
    for rng, lengths, max_len, seed in random_cases(60, 200):
        window = int(rng.integers(1, 80))
        got = pk.pack_vlbs(lengths, max_len, seed=seed, window=window)
        want = pk.reference_pack_vlbs(lengths, max_len, seed=seed, window=window)
        assert np.array_equal(got.pack_offsets, want.pack_offsets)
        assert np.array_equal(got.sample_indices, want.sample_indices)
        # Integer-valued costs create many ties, which exercises the tie-breaking rules.
        costs = rng.integers(0, 6, int(rng.integers(0, 120))) * float(rng.choice([1.0, 0.3]))
        dp, k, ws = (int(x) for x in rng.integers(1, 6, 3))
        drop_last = bool(rng.integers(0, 2))
        got_a = pk.balance_vlbs(costs, dp, k, window_steps=ws, seed=seed, drop_last=drop_last)
        want_a = pk.reference_balance_vlbs(costs, dp, k, window_steps=ws, seed=seed,
                                           drop_last=drop_last)
        assert np.array_equal(got_a, want_a)


def test_costs_match_numpy():
    lengths = lognormal_lengths(2000, 10)
    packs = pk.pack_vlbs(lengths, L)
    eff = np.minimum(lengths, L).astype(np.float64)
    want = [2.0 * eff[packs.pack(p)].sum() + 0.5 * (eff[packs.pack(p)] ** 2).sum()
            for p in range(packs.num_packs)]
    np.testing.assert_allclose(pk.pack_costs(lengths, packs, L, a=2.0, b=0.5), want, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Balancing.


@pytest.mark.parametrize("dp,k,drop_last", [(1, 1, True), (4, 1, False), (8, 3, True),
                                            (5, 2, False), (64, 1, False)])
def test_assignments_are_valid(dp, k, drop_last):
    lengths = lognormal_lengths(4000, 11)
    packs = pk.pack_vlbs(lengths, L)
    costs = pk.pack_costs(lengths, packs, L)
    assert_valid_assignment(pk.balance_vlbs(costs, dp, k, window_steps=3, drop_last=drop_last),
                            packs.num_packs, dp, k, drop_last)
    assert_valid_assignment(pk.balance_round_robin(packs.num_packs, dp, k, drop_last=drop_last),
                            packs.num_packs, dp, k, drop_last)


def test_round_robin_layout():
    a = pk.balance_round_robin(7, 2, 2, drop_last=False)
    # Slot i of a step -> rank i % dp, micro-batch i // dp.
    assert a.tolist() == [[[0, 2], [1, 3]], [[4, 6], [5, -1]]]


def test_hand_computed_lpt_within_a_step():
    # Costs 1, 2, 3, 4 on 2 ranks x 2 packs. LPT: 4 -> r0, 3 -> r1, 2 -> r1 (3 < 4),
    # 1 -> r0: loads 5 and 5. Round-robin gives {1, 3} and {2, 4}: 4 and 6.
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    vlbs = pk.balance_vlbs(costs, 2, 2, window_steps=1)
    assert sorted(map(sorted, vlbs[0].tolist())) == [[0, 3], [1, 2]]
    assert pk.rank_costs(costs, vlbs).tolist() == [[5.0, 5.0]]
    assert pk.simulated_time(costs, vlbs) == 5.0
    assert pk.simulated_time(costs, pk.balance_round_robin(4, 2, 2)) == 6.0


def test_hand_computed_step_grouping():
    # k = 1, 2 ranks, one window of 2 steps. Sorted: 5 (p0), 4 (p2) | 2 (p3), 1 (p1), so the
    # two expensive packs share a step: time 5 + 2 = 7. Round-robin: max(5,1) + max(4,2) = 9.
    costs = np.array([5.0, 1.0, 4.0, 2.0])
    vlbs = pk.balance_vlbs(costs, 2, 1, window_steps=2)
    assert sorted(sorted(step.ravel().tolist()) for step in vlbs) == [[0, 2], [1, 3]]
    assert pk.simulated_time(costs, vlbs) == 7.0
    assert pk.simulated_time(costs, pk.balance_round_robin(4, 2, 1)) == 9.0


def test_steps_stay_inside_their_window():
    costs = np.random.default_rng(12).random(6 * 4 * 2)
    a = pk.balance_vlbs(costs, 4, 2, window_steps=3)
    for step in range(a.shape[0]):
        window = step // 3
        assert np.all(a[step] // (3 * 4 * 2) == window)


@pytest.mark.parametrize("dp,k", [(8, 1), (8, 4), (64, 2)])
def test_vlbs_beats_naive_on_lognormal(dp, k):
    lengths = lognormal_lengths(60000, 13, median=600.0, sigma=1.2)
    naive = pk.naive_schedule(lengths, L, dp, k, seed=1)
    vlbs = pk.vlbs_schedule(lengths, L, dp, k, seed=1)
    # Slowest-rank cost of every VLBS step is below naive's on average, and in total.
    assert pk.step_costs(vlbs.costs, vlbs.assignment).mean() <= \
        pk.step_costs(naive.costs, naive.assignment).mean()
    assert pk.simulated_time(vlbs.costs, vlbs.assignment) < \
        0.9 * pk.simulated_time(naive.costs, naive.assignment)


# ------------------------------------------------------------------------------------------
# Bad input: ValueError with a clear message.


@pytest.mark.parametrize("call,match", [
    (lambda: pk.pack_vlbs([3, -1, 2], 10), r"lengths\[1\] = -1 is negative"),
    (lambda: pk.pack_naive([3, -1, 2], 10), r"lengths\[1\] = -1 is negative"),
    (lambda: pk.pack_vlbs([3, 1], 0), r"max_len must be >= 1, got 0"),
    (lambda: pk.pack_naive([3, 1], -5), r"max_len must be >= 1, got -5"),
    (lambda: pk.pack_vlbs([3, 20], 10, truncate=False), r"lengths\[1\] = 20 exceeds max_len"),
    (lambda: pk.pack_vlbs([1.5, 2.0], 10), r"lengths must be integers"),
    (lambda: pk.pack_vlbs([[1, 2]], 10), r"lengths must be 1-D"),
    (lambda: pk.pack_vlbs([1, 2], 10, window=0), r"window must be >= 1"),
    (lambda: pk.pack_vlbs([1, 2], 10, seed=-1), r"seed must be >= 0"),
    (lambda: pk.pack_vlbs([1, 2], 10.0), r"max_len must be an integer"),
    (lambda: pk.balance_vlbs([1.0, 2.0], 0), r"dp must be >= 1, got 0"),
    (lambda: pk.balance_vlbs([1.0, 2.0], -3), r"dp must be >= 1, got -3"),
    (lambda: pk.balance_round_robin(4, 0), r"dp must be >= 1, got 0"),
    (lambda: pk.balance_vlbs([1.0, 2.0], 2, 0), r"packs_per_rank must be >= 1"),
    (lambda: pk.balance_vlbs([1.0, 2.0], 2, window_steps=0), r"window_steps must be >= 1"),
    (lambda: pk.balance_vlbs([1.0, np.nan], 2), r"costs\[1\] = nan must be finite and >= 0"),
    (lambda: pk.balance_vlbs([1.0, -2.0], 2), r"costs\[1\] = -2.0 must be finite and >= 0"),
    (lambda: pk.pack_costs([1, 2], pk.Packs(np.array([0, 2]), np.array([0, 1])), 10, b=-1.0),
     r"cost coefficient b must be"),
    (lambda: pk.pack_stats([1, 2], (np.array([0, 2]), np.array([0, 5])), 10),
     r"sample_indices\[1\] = 5 is out of range"),
    (lambda: pk.pack_stats([1, 2], (np.array([0, 1]), np.array([0, 1])), 10),
     r"does not match len\(sample_indices\)"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_error_is_one_line():
    with pytest.raises(ValueError) as info:
        pk.pack_vlbs(np.array([5, 7, -2]), 8)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# The GIL is released during the heavy calls.


def test_gil_is_released():
    lengths = lognormal_lengths(1_500_000, 14)
    done = threading.Event()
    took = []

    def work():
        t0 = time.perf_counter()
        pk.pack_vlbs(lengths, L, window=1 << 16)
        took.append(time.perf_counter() - t0)
        done.set()

    worker = threading.Thread(target=work)
    last, max_gap = time.perf_counter(), 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        max_gap, last = max(max_gap, now - last), now
    worker.join()
    # Holding the GIL would freeze this loop for the whole call.
    assert max_gap < 0.5 * took[0], (max_gap, took[0])
