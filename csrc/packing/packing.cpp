// Packing of variable-length samples into sequences of at most max_len tokens.
#include "packing.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

#include "rng.h"

namespace s1pack {

namespace {

// Window positions and room values share one uint64 sort key (32 bits each), and bins are
// int32, so both stay below 2^31.
constexpr int64_t kMaxLen = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxWindow = (int64_t{1} << 31) - 1;

inline int64_t clipped(int64_t len, int64_t max_len) { return len < max_len ? len : max_len; }

std::vector<int64_t> visiting_order(int64_t n, bool shuffle, SplitMix64& rng) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (shuffle) rng.shuffle(order.data(), order.size());
  return order;
}

// Set of integers in [0, size) with "smallest member >= x" in O(log64 size).
// Level 0 has one bit per value; each higher level has one bit per non-zero word below it,
// so a search skips 64^k empty values at level k.
class CapacityIndex {
 public:
  explicit CapacityIndex(size_t size) {
    size_t bits = size;
    do {
      size_t words = (bits + 63) / 64;
      levels_.emplace_back(words, 0);
      bits = words;
    } while (bits > 1);
  }

  void insert(size_t x) {
    for (auto& level : levels_) {
      uint64_t& word = level[x >> 6];
      const bool had_bits = word != 0;
      word |= uint64_t{1} << (x & 63);
      if (had_bits) return;  // parents already know this word is non-empty
      x >>= 6;
    }
  }

  void erase(size_t x) {
    for (auto& level : levels_) {
      uint64_t& word = level[x >> 6];
      word &= ~(uint64_t{1} << (x & 63));
      if (word != 0) return;  // word still non-empty: parents unchanged
      x >>= 6;
    }
  }

  // Smallest member >= x, or -1.
  int64_t next_at_or_after(size_t x) const {
    size_t level = 0;
    size_t pos = x;
    for (;;) {
      if (level == levels_.size()) return -1;
      const auto& words = levels_[level];
      const size_t w = pos >> 6;
      if (w >= words.size()) return -1;
      const uint64_t bits = words[w] & (~uint64_t{0} << (pos & 63));
      if (bits != 0) {
        pos = (w << 6) + static_cast<size_t>(__builtin_ctzll(bits));
        break;
      }
      pos = w + 1;  // continue with the next word, one level up
      ++level;
    }
    while (level > 0) {  // walk down to the lowest set bit under the found one
      --level;
      pos = (pos << 6) + static_cast<size_t>(__builtin_ctzll(levels_[level][pos]));
    }
    return static_cast<int64_t>(pos);
  }

 private:
  std::vector<std::vector<uint64_t>> levels_;
};

}  // namespace

void check_lengths(const int64_t* lengths, int64_t n, int64_t max_len, bool truncate) {
  if (max_len < 1 || max_len > kMaxLen) {
    throw std::invalid_argument("max_len must be in [1, 2^31 - 1], got " + std::to_string(max_len));
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = lengths[i];
    if (len < 0) {
      throw std::invalid_argument("lengths[" + std::to_string(i) + "] = " + std::to_string(len) +
                                  " is negative");
    }
    if (!truncate && len > max_len) {
      throw std::invalid_argument("lengths[" + std::to_string(i) + "] = " + std::to_string(len) +
                                  " exceeds max_len = " + std::to_string(max_len) +
                                  " (pass truncate=True to cut such samples to max_len)");
    }
  }
}

Packs pack_next_fit(const int64_t* lengths, int64_t n, int64_t max_len, bool shuffle,
                    uint64_t seed, bool truncate) {
  check_lengths(lengths, n, max_len, truncate);
  SplitMix64 rng = make_stream(seed, kPackStream);
  Packs packs;
  packs.samples = visiting_order(n, shuffle, rng);
  packs.offsets.push_back(0);
  int64_t used = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t len = clipped(lengths[packs.samples[t]], max_len);
    if (t > 0 && used + len > max_len) {
      packs.offsets.push_back(t);
      used = 0;
    }
    used += len;
  }
  if (n > 0) packs.offsets.push_back(n);
  return packs;
}

Packs pack_best_fit_windowed(const int64_t* lengths, int64_t n, int64_t max_len, int64_t window,
                             bool shuffle, uint64_t seed, bool truncate) {
  check_lengths(lengths, n, max_len, truncate);
  if (window < 1 || window > kMaxWindow) {
    throw std::invalid_argument("window must be in [1, 2^31 - 1], got " + std::to_string(window));
  }
  SplitMix64 rng = make_stream(seed, kPackStream);
  const std::vector<int64_t> order = visiting_order(n, shuffle, rng);

  Packs packs;
  packs.samples.resize(static_cast<size_t>(n));
  packs.offsets.reserve(static_cast<size_t>(n / 4 + 2));
  packs.offsets.push_back(0);

  const size_t cap_w = static_cast<size_t>(std::min(window, std::max<int64_t>(n, 1)));
  std::vector<uint64_t> keys(cap_w);
  std::vector<int32_t> bin_of(cap_w);   // local bin of the j-th sample of the window
  std::vector<int64_t> room(cap_w);     // free tokens per local bin
  std::vector<int32_t> next_bin(cap_w); // intrusive LIFO lists of bins with equal room
  std::vector<int64_t> fill_pos(cap_w + 1);
  std::vector<int32_t> bin_perm(cap_w);
  // One list head per possible room value; the index finds the tightest room >= a length.
  std::vector<int32_t> head(static_cast<size_t>(max_len) + 1, -1);
  CapacityIndex nonempty(static_cast<size_t>(max_len) + 1);

  auto push = [&](int32_t bin, int64_t r) {
    room[bin] = r;
    next_bin[bin] = head[r];
    if (head[r] < 0) nonempty.insert(static_cast<size_t>(r));
    head[r] = bin;
  };

  for (int64_t w0 = 0; w0 < n; w0 += window) {
    const int64_t m = std::min(window, n - w0);
    // Longest first; ties by visiting position. One uint64 key keeps the sort cheap.
    for (int64_t j = 0; j < m; ++j) {
      const int64_t len = clipped(lengths[order[w0 + j]], max_len);
      keys[j] = (static_cast<uint64_t>(max_len - len) << 32) | static_cast<uint64_t>(j);
    }
    std::sort(keys.begin(), keys.begin() + m);

    int32_t bins = 0;
    for (int64_t q = 0; q < m; ++q) {
      const int64_t j = static_cast<int64_t>(keys[q] & 0xffffffffull);
      const int64_t len = max_len - static_cast<int64_t>(keys[q] >> 32);
      const int64_t r = nonempty.next_at_or_after(static_cast<size_t>(len));
      int32_t bin;
      if (r < 0) {
        bin = bins++;
        push(bin, max_len - len);
      } else {
        bin = head[r];  // best fit: the bin with the least room that still fits
        head[r] = next_bin[bin];
        if (head[r] < 0) nonempty.erase(static_cast<size_t>(r));
        push(bin, r - len);
      }
      bin_of[j] = bin;
    }

    // Emit this window's bins in random order: BFD creates them longest-first, and that
    // periodic pattern should not reach consumers that do not rebalance.
    std::iota(bin_perm.begin(), bin_perm.begin() + bins, 0);
    rng.shuffle(bin_perm.data(), static_cast<size_t>(bins));
    std::fill(fill_pos.begin(), fill_pos.begin() + bins + 1, 0);
    for (int64_t j = 0; j < m; ++j) ++fill_pos[bin_of[j]];
    std::vector<int64_t>& offs = packs.offsets;
    int64_t start = w0;
    for (int32_t p = 0; p < bins; ++p) {  // counts -> start positions, in emitted order
      const int32_t b = bin_perm[p];
      const int64_t count = fill_pos[b];
      fill_pos[b] = start;
      start += count;
      offs.push_back(start);
    }
    // Inside a pack, samples keep the order they were placed in (longest first).
    for (int64_t q = 0; q < m; ++q) {
      const int64_t j = static_cast<int64_t>(keys[q] & 0xffffffffull);
      packs.samples[fill_pos[bin_of[j]]++] = order[w0 + j];
    }

    // Reset only the list heads this window touched, so cost stays O(window), not O(max_len).
    for (int32_t b = 0; b < bins; ++b) {
      const int64_t r = room[b];
      if (head[r] >= 0) {
        head[r] = -1;
        nonempty.erase(static_cast<size_t>(r));
      }
    }
  }
  return packs;
}

void pack_stats(const int64_t* lengths, int64_t n, int64_t max_len, const int64_t* offsets,
                int64_t num_packs, const int64_t* samples, int64_t num_samples, int64_t* tokens,
                int64_t* sum_sq) {
  if (offsets[0] != 0) {
    throw std::invalid_argument("pack_offsets[0] must be 0, got " + std::to_string(offsets[0]));
  }
  if (offsets[num_packs] != num_samples) {
    throw std::invalid_argument("pack_offsets[-1] = " + std::to_string(offsets[num_packs]) +
                                " does not match len(sample_indices) = " +
                                std::to_string(num_samples));
  }
  for (int64_t p = 0; p < num_packs; ++p) {
    if (offsets[p + 1] < offsets[p]) {
      throw std::invalid_argument("pack_offsets must be non-decreasing (pack " +
                                  std::to_string(p) + ")");
    }
    int64_t tok = 0, sq = 0;
    for (int64_t t = offsets[p]; t < offsets[p + 1]; ++t) {
      const int64_t i = samples[t];
      if (i < 0 || i >= n) {
        throw std::invalid_argument("sample_indices[" + std::to_string(t) + "] = " +
                                    std::to_string(i) + " is out of range for " +
                                    std::to_string(n) + " lengths");
      }
      if (lengths[i] < 0) {
        throw std::invalid_argument("lengths[" + std::to_string(i) + "] = " +
                                    std::to_string(lengths[i]) + " is negative");
      }
      const int64_t len = clipped(lengths[i], max_len);
      tok += len;
      sq += len * len;
    }
    tokens[p] = tok;
    sum_sq[p] = sq;
  }
}

}  // namespace s1pack
