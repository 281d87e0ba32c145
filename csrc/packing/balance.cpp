// Assignment of packs to (step, data-parallel rank, micro-batch slot).
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

#include "packing.h"
#include "rng.h"

namespace s1pack {

namespace {

void check_shape(int64_t num_packs, int64_t dp, int64_t packs_per_rank) {
  if (num_packs < 0) throw std::invalid_argument("num_packs must be >= 0");
  if (dp < 1) throw std::invalid_argument("dp must be >= 1, got " + std::to_string(dp));
  if (packs_per_rank < 1) {
    throw std::invalid_argument("packs_per_rank must be >= 1, got " +
                                std::to_string(packs_per_rank));
  }
  if (dp > (int64_t{1} << 40) / packs_per_rank) {
    throw std::invalid_argument("dp * packs_per_rank is too large");
  }
}

int64_t used_packs(int64_t num_packs, int64_t per_step, bool drop_last) {
  return drop_last ? (num_packs / per_step) * per_step : num_packs;
}

}  // namespace

Assignment balance_round_robin(int64_t num_packs, int64_t dp, int64_t packs_per_rank,
                               bool drop_last) {
  check_shape(num_packs, dp, packs_per_rank);
  const int64_t per_step = dp * packs_per_rank;
  const int64_t used = used_packs(num_packs, per_step, drop_last);
  Assignment out;
  out.steps = (used + per_step - 1) / per_step;
  out.ids.assign(static_cast<size_t>(out.steps * per_step), -1);
  for (int64_t i = 0; i < used; ++i) {
    const int64_t step = i / per_step, slot = i % per_step;
    const int64_t rank = slot % dp, micro = slot / dp;
    out.ids[static_cast<size_t>((step * dp + rank) * packs_per_rank + micro)] = i;
  }
  return out;
}

Assignment balance_lpt_windowed(const double* costs, int64_t num_packs, int64_t dp,
                                int64_t packs_per_rank, int64_t window_steps, uint64_t seed,
                                bool drop_last) {
  check_shape(num_packs, dp, packs_per_rank);
  if (window_steps < 1) {
    throw std::invalid_argument("window_steps must be >= 1, got " + std::to_string(window_steps));
  }
  for (int64_t i = 0; i < num_packs; ++i) {
    if (!(costs[i] >= 0.0) || !std::isfinite(costs[i])) {  // also rejects NaN
      throw std::invalid_argument("costs[" + std::to_string(i) + "] = " +
                                  std::to_string(costs[i]) + " must be finite and >= 0");
    }
  }
  const int64_t k = packs_per_rank;
  const int64_t per_step = dp * k;
  const int64_t used = used_packs(num_packs, per_step, drop_last);
  const int64_t full_steps = num_packs / per_step;
  Assignment out;
  out.steps = (used + per_step - 1) / per_step;
  out.ids.assign(static_cast<size_t>(out.steps * per_step), -1);

  SplitMix64 rng = make_stream(seed, kBalanceStream);
  std::vector<int64_t> sorted;
  std::vector<int64_t> step_pos;
  std::vector<int64_t> rank_perm(static_cast<size_t>(dp));
  std::vector<int64_t> slots(static_cast<size_t>(per_step));
  std::vector<int64_t> filled(static_cast<size_t>(dp));
  using Load = std::pair<double, int64_t>;  // (cost so far, rank); ties go to the lower rank
  std::vector<Load> heap;
  heap.reserve(static_cast<size_t>(dp));

  for (int64_t s0 = 0; s0 < out.steps; s0 += window_steps) {
    const int64_t s1 = std::min(s0 + window_steps, out.steps);
    const int64_t p0 = s0 * per_step, p1 = std::min(s1 * per_step, used);

    // Sorting a window by cost and cutting it into consecutive runs puts packs of similar
    // cost into the same step, so no rank waits long for another: the sum over steps of the
    // slowest rank is what training time pays for.
    sorted.resize(static_cast<size_t>(p1 - p0));
    std::iota(sorted.begin(), sorted.end(), p0);
    std::sort(sorted.begin(), sorted.end(), [costs](int64_t x, int64_t y) {
      return costs[x] > costs[y] || (costs[x] == costs[y] && x < y);
    });

    // Steps leave the window in random order, so cost does not trend within a window.
    // A trailing partial step (drop_last=False) stays last, so padding sits at the end.
    const int64_t nsteps = s1 - s0;
    const int64_t nfull = std::max<int64_t>(0, std::min(s1, full_steps) - s0);
    step_pos.resize(static_cast<size_t>(nsteps));
    std::iota(step_pos.begin(), step_pos.end(), int64_t{0});
    rng.shuffle(step_pos.data(), static_cast<size_t>(nfull));

    for (int64_t t = 0; t < nsteps; ++t) {
      const int64_t q0 = t * per_step;
      const int64_t q1 = std::min(q0 + per_step, p1 - p0);
      // LPT with a cardinality limit: the next (smaller) pack goes to the least-loaded rank
      // that still has a free slot.
      std::fill(filled.begin(), filled.end(), 0);
      std::fill(slots.begin(), slots.end(), -1);
      // Min-heap on (load, rank): every key is unique, so the pick never depends on heap
      // internals.
      heap.clear();
      for (int64_t r = 0; r < dp; ++r) heap.emplace_back(0.0, r);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t pack = sorted[static_cast<size_t>(q)];
        std::pop_heap(heap.begin(), heap.end(), std::greater<Load>());
        const Load top = heap.back();
        heap.pop_back();
        const int64_t r = top.second;
        slots[static_cast<size_t>(r * k + filled[r]++)] = pack;
        if (filled[r] < k) {
          heap.emplace_back(top.first + costs[pack], r);
          std::push_heap(heap.begin(), heap.end(), std::greater<Load>());
        }
      }
      // Random rank order, so the heaviest pack of every step does not always go to rank 0.
      std::iota(rank_perm.begin(), rank_perm.end(), int64_t{0});
      rng.shuffle(rank_perm.data(), rank_perm.size());
      const int64_t step = s0 + step_pos[static_cast<size_t>(t)];
      for (int64_t r = 0; r < dp; ++r) {
        std::copy_n(slots.begin() + r * k, k,
                    out.ids.begin() + (step * dp + rank_perm[static_cast<size_t>(r)]) * k);
      }
    }
  }
  return out;
}

}  // namespace s1pack
