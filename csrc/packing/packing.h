// Sequence packing and VLBS (variable-length balanced strategy) scheduling.
//
// All functions are plain C++ on raw pointers so that the bindings can call them with the GIL
// released. Invalid input raises std::invalid_argument (pybind11 turns it into ValueError).
#pragma once

#include <cstdint>
#include <vector>

namespace s1pack {

// Packs in CSR form: pack p holds samples[offsets[p] .. offsets[p + 1]).
struct Packs {
  std::vector<int64_t> offsets;
  std::vector<int64_t> samples;
};

// Row-major (steps, dp, packs_per_rank) table of pack ids; -1 marks an empty slot.
struct Assignment {
  std::vector<int64_t> ids;
  int64_t steps = 0;
};

// Raises on a negative length, or on a length > max_len when truncate is false.
void check_lengths(const int64_t* lengths, int64_t n, int64_t max_len, bool truncate);

// Baseline: next-fit in visiting order (a pack is closed as soon as the next sample does
// not fit). The visiting order is a seeded shuffle, or the input order when shuffle is false.
Packs pack_next_fit(const int64_t* lengths, int64_t n, int64_t max_len, bool shuffle,
                    uint64_t seed, bool truncate);

// VLBS packing: best-fit-decreasing inside consecutive windows of `window` samples of the
// visiting order; packs of a window are emitted in a seeded random order.
Packs pack_best_fit_windowed(const int64_t* lengths, int64_t n, int64_t max_len, int64_t window,
                             bool shuffle, uint64_t seed, bool truncate);

// Per pack: token count and sum of squared sample lengths (lengths clipped to max_len).
void pack_stats(const int64_t* lengths, int64_t n, int64_t max_len, const int64_t* offsets,
                int64_t num_packs, const int64_t* samples, int64_t num_samples, int64_t* tokens,
                int64_t* sum_sq);

// Baseline: pack i goes to step i / (dp * k), rank i % dp (so consecutive packs land on
// consecutive ranks).
Assignment balance_round_robin(int64_t num_packs, int64_t dp, int64_t packs_per_rank,
                               bool drop_last);

// VLBS balancing: inside windows of `window_steps` steps, sort packs by cost, give each step
// a consecutive run of the sorted packs, and spread each step over ranks with LPT.
Assignment balance_lpt_windowed(const double* costs, int64_t num_packs, int64_t dp,
                                int64_t packs_per_rank, int64_t window_steps, uint64_t seed,
                                bool drop_last);

}  // namespace s1pack
