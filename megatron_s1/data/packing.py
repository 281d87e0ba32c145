"""Sequence packing and VLBS (variable-length balanced strategy) scheduling.

Two stages turn per-sample token counts into a training schedule:

1. **Packing** puts samples into packs (sequences) of at most ``max_len`` tokens. A sample is
   never split across packs. Samples longer than ``max_len`` are truncated to ``max_len`` by
   default (they then fill a pack on their own); pass ``truncate=False`` to get a ValueError
   instead.
2. **Balancing** assigns packs to ``(step, data-parallel rank, micro-batch slot)``. Every rank
   gets exactly ``packs_per_rank`` packs per step (fixed micro-batch count, as Megatron's
   schedules expect). The cost of a pack is ``a * tokens + b * sum(len_i ** 2)``: the linear
   part (GEMMs) grows with tokens, attention grows with the square of each sample's length.

The VLBS path (:func:`pack_vlbs` + :func:`balance_vlbs`) packs with best-fit-decreasing inside
windows of samples and, inside windows of steps, sorts packs by cost so that each step holds
packs of similar cost, spread over ranks by LPT. The baseline path (:func:`pack_naive` +
:func:`balance_round_robin`) is next-fit in data order and round-robin assignment.

Everything is deterministic given the seed. The C++ core (``megatron_s1._packing``, built from
``csrc/packing``) does the work with the GIL released; the ``reference_*`` functions at the end
are a slow pure-Python/numpy mirror of the same algorithms, used by the tests.
"""

from __future__ import annotations

import heapq
import math
import numbers
from typing import NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_A",
    "DEFAULT_B",
    "DEFAULT_PACK_WINDOW",
    "DEFAULT_WINDOW_STEPS",
    "Packs",
    "Schedule",
    "pack_naive",
    "pack_vlbs",
    "pack_stats",
    "pack_costs",
    "balance_round_robin",
    "balance_vlbs",
    "rank_costs",
    "step_costs",
    "simulated_time",
    "vlbs_schedule",
    "naive_schedule",
]

# Cost model defaults, in units of "one token of linear work": attention work of one sample of
# length l equals its linear work at l = a / b = 4096 tokens (see docs/performance.md).
DEFAULT_A = 1.0
DEFAULT_B = 1.0 / 4096
# Samples per best-fit window: large enough for ~99.9% fill at 32k packs, small enough that
# data order stays random at the scale of an epoch.
DEFAULT_PACK_WINDOW = 16384
# Steps per balancing window.
DEFAULT_WINDOW_STEPS = 16

_MAX_LEN_LIMIT = 2**31 - 1
_U64 = (1 << 64) - 1


class Packs(NamedTuple):
    """Packs in CSR form: pack ``p`` holds ``sample_indices[pack_offsets[p]:pack_offsets[p+1]]``.

    ``sample_indices`` are indices into the ``lengths`` array that was packed; every sample
    appears exactly once.
    """

    pack_offsets: np.ndarray  # int64, shape (num_packs + 1,)
    sample_indices: np.ndarray  # int64, shape (num_samples,)

    @property
    def num_packs(self) -> int:
        return len(self.pack_offsets) - 1

    def pack(self, p: int) -> np.ndarray:
        """Sample indices of pack ``p`` (a view)."""
        return self.sample_indices[self.pack_offsets[p] : self.pack_offsets[p + 1]]


class Schedule(NamedTuple):
    """A packing plus its assignment; ``assignment[step, rank, slot]`` is a pack id or -1."""

    packs: Packs
    costs: np.ndarray  # float64, shape (num_packs,)
    assignment: np.ndarray  # int64, shape (steps, dp, packs_per_rank)


# --------------------------------------------------------------------------------------------
# Argument validation: one clear ValueError line per problem.


def _native():
    try:
        from megatron_s1 import _packing
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise ImportError(
            "megatron_s1._packing is not built; run `python setup.py build_ext --inplace` "
            f"(or `pip install -e .`) first ({exc})"
        ) from exc
    return _packing


def _int_arg(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _seed_arg(seed) -> int:
    return _int_arg("seed", seed, 0, _U64)


def _lengths_arg(lengths) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("lengths do not fit in int64")
    # No copy when the caller already has contiguous int64 (the common case).
    return np.ascontiguousarray(arr, dtype=np.int64)


def _costs_arg(costs) -> np.ndarray:
    arr = np.asarray(costs)
    if arr.ndim != 1:
        raise ValueError(f"costs must be 1-D, got shape {arr.shape}")
    if arr.size and not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"costs must be numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.size and not (np.all(np.isfinite(arr)) and arr.min() >= 0):
        bad = int(np.flatnonzero(~(np.isfinite(arr) & (arr >= 0)))[0])
        raise ValueError(f"costs[{bad}] = {arr[bad]} must be finite and >= 0")
    return arr


def _cost_coeffs(a, b) -> tuple[float, float]:
    for name, v in (("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"cost coefficient {name} must be a finite number >= 0, got {v!r}")
    return float(a), float(b)


def _packs_arg(packs) -> tuple[np.ndarray, np.ndarray]:
    try:
        offsets, samples = packs
    except (TypeError, ValueError):
        raise ValueError("packs must be a Packs / (pack_offsets, sample_indices) pair") from None
    return (_index_array("pack_offsets", offsets), _index_array("sample_indices", samples))


def _index_array(name, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D integer array")
    return np.ascontiguousarray(arr, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Packing.


def pack_naive(lengths, max_len: int, *, seed: int = 0, shuffle: bool = True,
               truncate: bool = True) -> Packs:
    """Baseline packing: next-fit in visiting order.

    Samples are visited in a seeded random order (or input order with ``shuffle=False``); a
    pack is closed as soon as the next sample does not fit. Packs come out in visiting order.

    Args:
        lengths: 1-D integer array of sample lengths in tokens (>= 0).
        max_len: pack capacity in tokens (>= 1).
        seed: seed of the shuffle (0 <= seed < 2**64).
        shuffle: visit samples in a seeded random order instead of input order.
        truncate: treat lengths > max_len as max_len; if False such lengths raise ValueError.

    Returns:
        :class:`Packs` (``pack_offsets``, ``sample_indices``), int64 arrays owned by numpy.
    """
    lengths = _lengths_arg(lengths)
    max_len = _int_arg("max_len", max_len, 1, _MAX_LEN_LIMIT)
    offsets, samples = _native().pack_next_fit(lengths, max_len, bool(shuffle), _seed_arg(seed),
                                               bool(truncate))
    return Packs(offsets, samples)


def pack_vlbs(lengths, max_len: int, *, seed: int = 0, window: int = DEFAULT_PACK_WINDOW,
              shuffle: bool = True, truncate: bool = True) -> Packs:
    """VLBS packing: best-fit-decreasing inside windows of ``window`` samples.

    Samples are visited in a seeded random order (or input order with ``shuffle=False``) and
    cut into consecutive windows. Within a window, samples are placed longest first, each into
    the pack with the least room that still fits it (a new pack if none does). A window's
    packs are emitted in seeded random order; inside a pack, samples are longest first.
    Windows keep data order random at large scale while packs come out nearly full.

    Args:
        lengths: 1-D integer array of sample lengths in tokens (>= 0).
        max_len: pack capacity in tokens (1 <= max_len < 2**31).
        seed: seed of the shuffles (0 <= seed < 2**64).
        window: samples per best-fit window (>= 1).
        shuffle: visit samples in a seeded random order instead of input order.
        truncate: treat lengths > max_len as max_len; if False such lengths raise ValueError.

    Returns:
        :class:`Packs` (``pack_offsets``, ``sample_indices``), int64 arrays owned by numpy.
    """
    lengths = _lengths_arg(lengths)
    max_len = _int_arg("max_len", max_len, 1, _MAX_LEN_LIMIT)
    window = _int_arg("window", window, 1, 2**31 - 1)
    offsets, samples = _native().pack_best_fit_windowed(lengths, max_len, window, bool(shuffle),
                                                        _seed_arg(seed), bool(truncate))
    return Packs(offsets, samples)


def pack_stats(lengths, packs, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pack ``(tokens, sum_sq)`` as int64 arrays; lengths are clipped to ``max_len``.

    ``sum_sq`` is the sum of squared sample lengths of the pack (the attention work).
    """
    lengths = _lengths_arg(lengths)
    max_len = _int_arg("max_len", max_len, 1, _MAX_LEN_LIMIT)
    offsets, samples = _packs_arg(packs)
    if offsets.size == 0:
        raise ValueError("pack_offsets must have at least one entry (0)")
    return _native().pack_stats(lengths, max_len, offsets, samples)


def pack_costs(lengths, packs, max_len: int, *, a: float = DEFAULT_A,
               b: float = DEFAULT_B) -> np.ndarray:
    """Per-pack cost ``a * tokens + b * sum(len_i ** 2)`` as a float64 array."""
    a, b = _cost_coeffs(a, b)
    tokens, sum_sq = pack_stats(lengths, packs, max_len)
    return a * tokens.astype(np.float64) + b * sum_sq.astype(np.float64)


# --------------------------------------------------------------------------------------------
# Balancing.


def balance_round_robin(num_packs: int, dp: int, packs_per_rank: int = 1, *,
                        drop_last: bool = True) -> np.ndarray:
    """Baseline assignment: pack ``i`` goes to step ``i // (dp * k)``, rank ``i % dp``.

    Args:
        num_packs: number of packs (>= 0).
        dp: data-parallel ranks (>= 1).
        packs_per_rank: packs (micro-batches) per rank per step, ``k`` (>= 1).
        drop_last: drop the last ``num_packs % (dp * k)`` packs; if False they form a last,
            partly empty step.

    Returns:
        int64 array ``(steps, dp, packs_per_rank)`` of pack ids; -1 marks an empty slot.
    """
    num_packs = _int_arg("num_packs", num_packs, 0)
    dp = _int_arg("dp", dp, 1)
    packs_per_rank = _int_arg("packs_per_rank", packs_per_rank, 1)
    return _native().balance_round_robin(num_packs, dp, packs_per_rank, bool(drop_last))


def balance_vlbs(costs, dp: int, packs_per_rank: int = 1, *,
                 window_steps: int = DEFAULT_WINDOW_STEPS, seed: int = 0,
                 drop_last: bool = True) -> np.ndarray:
    """VLBS assignment of packs to steps and ranks, minimising each step's slowest rank.

    Packs are taken in order in windows of ``window_steps * dp * packs_per_rank``. Inside a
    window they are sorted by cost (descending) and each step takes the next ``dp * k`` packs,
    so a step holds packs of similar cost; within the step, packs go largest first to the
    least-loaded rank that still has a free slot (LPT). Steps of a window are then put in
    seeded random order, and ranks within each step are permuted at random, so neither step
    order nor rank id correlates with cost. Data order is only changed inside a window.

    Args:
        costs: 1-D array of per-pack costs (finite, >= 0), e.g. from :func:`pack_costs`.
        dp: data-parallel ranks (>= 1).
        packs_per_rank: packs (micro-batches) per rank per step, ``k`` (>= 1).
        window_steps: steps per sorting window (>= 1); larger balances better, reorders more.
        seed: seed of the step/rank shuffles (0 <= seed < 2**64).
        drop_last: drop the last ``len(costs) % (dp * k)`` packs; if False they form a last,
            partly empty step (always the final step).

    Returns:
        int64 array ``(steps, dp, packs_per_rank)`` of pack ids; -1 marks an empty slot.
    """
    costs = _costs_arg(costs)
    dp = _int_arg("dp", dp, 1)
    packs_per_rank = _int_arg("packs_per_rank", packs_per_rank, 1)
    window_steps = _int_arg("window_steps", window_steps, 1)
    return _native().balance_lpt_windowed(costs, dp, packs_per_rank, window_steps,
                                          _seed_arg(seed), bool(drop_last))


def rank_costs(costs, assignment) -> np.ndarray:
    """Cost of every (step, rank): sum over its slots; -1 slots cost nothing. Shape (steps, dp)."""
    costs = _costs_arg(costs)
    assignment = np.asarray(assignment)
    if assignment.ndim != 3:
        raise ValueError(f"assignment must be (steps, dp, packs_per_rank), got shape {assignment.shape}")
    padded = np.append(costs, 0.0)  # index -1 -> the appended 0
    return padded[assignment].sum(axis=2)


def step_costs(costs, assignment) -> np.ndarray:
    """Simulated time of every step: the cost of its slowest rank. Shape (steps,)."""
    return rank_costs(costs, assignment).max(axis=1, initial=0.0)


def simulated_time(costs, assignment) -> float:
    """Simulated training time: sum over steps of the slowest rank's cost."""
    return float(step_costs(costs, assignment).sum())


# --------------------------------------------------------------------------------------------
# One-call schedules.


def vlbs_schedule(lengths, max_len: int, dp: int, packs_per_rank: int = 1, *,
                  a: float = DEFAULT_A, b: float = DEFAULT_B, seed: int = 0,
                  window: int = DEFAULT_PACK_WINDOW, window_steps: int = DEFAULT_WINDOW_STEPS,
                  shuffle: bool = True, truncate: bool = True,
                  drop_last: bool = True) -> Schedule:
    """:func:`pack_vlbs` + :func:`pack_costs` + :func:`balance_vlbs` with one seed."""
    packs = pack_vlbs(lengths, max_len, seed=seed, window=window, shuffle=shuffle,
                      truncate=truncate)
    costs = pack_costs(lengths, packs, max_len, a=a, b=b)
    assignment = balance_vlbs(costs, dp, packs_per_rank, window_steps=window_steps, seed=seed,
                              drop_last=drop_last)
    return Schedule(packs, costs, assignment)


def naive_schedule(lengths, max_len: int, dp: int, packs_per_rank: int = 1, *,
                   a: float = DEFAULT_A, b: float = DEFAULT_B, seed: int = 0,
                   shuffle: bool = True, truncate: bool = True,
                   drop_last: bool = True) -> Schedule:
    """:func:`pack_naive` + :func:`pack_costs` + :func:`balance_round_robin` (the baseline)."""
    packs = pack_naive(lengths, max_len, seed=seed, shuffle=shuffle, truncate=truncate)
    costs = pack_costs(lengths, packs, max_len, a=a, b=b)
    assignment = balance_round_robin(packs.num_packs, dp, packs_per_rank, drop_last=drop_last)
    return Schedule(packs, costs, assignment)


# --------------------------------------------------------------------------------------------
# Pure-Python reference (slow; small inputs only). Mirrors csrc/packing exactly, including the
# random streams and tie-breaking, so the tests can compare results element by element.

_PACK_STREAM = 0x7061636B
_BALANCE_STREAM = 0x62616C61


class _SplitMix64:
    def __init__(self, seed: int):
        self.state = seed & _U64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _U64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        m = self.next() * n
        if (m & _U64) < n:
            threshold = ((1 << 64) - n) % n
            while (m & _U64) < threshold:
                m = self.next() * n
        return m >> 64

    def shuffle(self, a, n: int | None = None) -> None:
        for i in range(len(a) if n is None else n, 1, -1):
            j = self.below(i)
            a[i - 1], a[j] = a[j], a[i - 1]


def _stream(seed: int, tag: int) -> _SplitMix64:
    return _SplitMix64(_SplitMix64(seed ^ tag).next())


def _ref_checked(lengths, max_len, truncate):
    lengths = [int(x) for x in _lengths_arg(lengths)]
    for i, x in enumerate(lengths):
        if x < 0 or (not truncate and x > max_len):
            raise ValueError(f"lengths[{i}] = {x} is invalid")
    return [min(x, max_len) for x in lengths]


def reference_pack_naive(lengths, max_len, *, seed=0, shuffle=True, truncate=True) -> Packs:
    """Pure-Python mirror of :func:`pack_naive`."""
    eff = _ref_checked(lengths, max_len, truncate)
    rng = _stream(seed, _PACK_STREAM)
    order = list(range(len(eff)))
    if shuffle:
        rng.shuffle(order)
    offsets, used = [0], 0
    for t, i in enumerate(order):
        if t > 0 and used + eff[i] > max_len:
            offsets.append(t)
            used = 0
        used += eff[i]
    if order:
        offsets.append(len(order))
    return Packs(np.array(offsets, dtype=np.int64), np.array(order, dtype=np.int64))


def reference_pack_vlbs(lengths, max_len, *, seed=0, window=DEFAULT_PACK_WINDOW, shuffle=True,
                        truncate=True) -> Packs:
    """Pure-Python mirror of :func:`pack_vlbs`."""
    eff = _ref_checked(lengths, max_len, truncate)
    rng = _stream(seed, _PACK_STREAM)
    order = list(range(len(eff)))
    if shuffle:
        rng.shuffle(order)
    offsets, samples = [0], []
    for w0 in range(0, len(order), window):
        chunk = order[w0 : w0 + window]
        by_len = sorted(range(len(chunk)), key=lambda j: (-eff[chunk[j]], j))
        lists: dict[int, list[int]] = {}  # room -> bins with that room, last pushed on top
        members: list[list[int]] = []
        for j in by_len:
            length = eff[chunk[j]]
            fits = [r for r, bins in lists.items() if bins and r >= length]
            if fits:
                r = min(fits)
                b = lists[r].pop()
                lists.setdefault(r - length, []).append(b)
            else:
                b = len(members)
                members.append([])
                lists.setdefault(max_len - length, []).append(b)
            members[b].append(chunk[j])
        perm = list(range(len(members)))
        rng.shuffle(perm)
        for b in perm:
            samples.extend(members[b])
            offsets.append(len(samples))
    return Packs(np.array(offsets, dtype=np.int64), np.array(samples, dtype=np.int64))


def reference_balance_round_robin(num_packs, dp, packs_per_rank=1, *, drop_last=True) -> np.ndarray:
    """numpy mirror of :func:`balance_round_robin`."""
    per_step = dp * packs_per_rank
    used = (num_packs // per_step) * per_step if drop_last else num_packs
    steps = -(-used // per_step)
    ids = np.full(steps * per_step, -1, dtype=np.int64)
    ids[:used] = np.arange(used)
    # Slot i of a step is (micro i // dp, rank i % dp): reshape as (steps, k, dp), swap axes.
    return ids.reshape(steps, packs_per_rank, dp).transpose(0, 2, 1).copy()


def reference_balance_vlbs(costs, dp, packs_per_rank=1, *, window_steps=DEFAULT_WINDOW_STEPS,
                           seed=0, drop_last=True) -> np.ndarray:
    """Pure-Python mirror of :func:`balance_vlbs`."""
    costs = [float(c) for c in _costs_arg(costs)]
    k = packs_per_rank
    per_step = dp * k
    full_steps = len(costs) // per_step
    used = full_steps * per_step if drop_last else len(costs)
    steps = -(-used // per_step)
    out = np.full((steps, dp, k), -1, dtype=np.int64)
    rng = _stream(seed, _BALANCE_STREAM)
    for s0 in range(0, steps, window_steps):
        s1 = min(s0 + window_steps, steps)
        p0, p1 = s0 * per_step, min(s1 * per_step, used)
        ranked = sorted(range(p0, p1), key=lambda i: (-costs[i], i))
        step_pos = list(range(s1 - s0))
        rng.shuffle(step_pos, max(0, min(s1, full_steps) - s0))
        for t in range(s1 - s0):
            heap = [(0.0, r) for r in range(dp)]
            slots = [[] for _ in range(dp)]
            for pack in ranked[t * per_step : (t + 1) * per_step]:
                load, r = heapq.heappop(heap)
                slots[r].append(pack)
                if len(slots[r]) < k:
                    heapq.heappush(heap, (load + costs[pack], r))
            rank_perm = list(range(dp))
            rng.shuffle(rank_perm)
            for r in range(dp):
                out[s0 + step_pos[t], rank_perm[r], : len(slots[r])] = slots[r]
    return out
