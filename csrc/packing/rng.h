// Deterministic random numbers for packing and balancing.
//
// We use our own splitmix64 rather than <random> because std:: distributions are
// implementation-defined: the same seed must give the same packs on every platform and
// in the pure-Python reference (megatron_s1/data/packing.py mirrors this file exactly).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace s1pack {

// High 64 bits of a 64x64-bit product; the fallback keeps non-GCC/Clang compilers working.
inline uint64_t mul_hi_lo(uint64_t a, uint64_t b, uint64_t* lo) {
#if defined(__SIZEOF_INT128__)
  unsigned __int128 m = static_cast<unsigned __int128>(a) * b;
  *lo = static_cast<uint64_t>(m);
  return static_cast<uint64_t>(m >> 64);
#else
  uint64_t a_lo = a & 0xffffffffull, a_hi = a >> 32, b_lo = b & 0xffffffffull, b_hi = b >> 32;
  uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi, hl = a_hi * b_lo, hh = a_hi * b_hi;
  uint64_t mid = (ll >> 32) + (lh & 0xffffffffull) + (hl & 0xffffffffull);
  *lo = (mid << 32) | (ll & 0xffffffffull);
  return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
#endif
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  // Uniform integer in [0, n), n >= 1, without modulo bias (Lemire's multiply-and-reject).
  uint64_t below(uint64_t n) {
    uint64_t lo;
    uint64_t hi = mul_hi_lo(next(), n, &lo);
    if (lo < n) {
      const uint64_t threshold = (0 - n) % n;  // 2^64 mod n
      while (lo < threshold) hi = mul_hi_lo(next(), n, &lo);
    }
    return hi;
  }

  // Fisher-Yates, walking from the back: a[i] swaps with a[below(i + 1)].
  template <class T>
  void shuffle(T* a, size_t n) {
    for (size_t i = n; i > 1; --i) {
      size_t j = static_cast<size_t>(below(i));
      std::swap(a[i - 1], a[j]);
    }
  }

 private:
  uint64_t state_;
};

// Independent streams per purpose, so that passing the same seed to packing and to balancing
// does not replay the same random sequence twice.
constexpr uint64_t kPackStream = 0x7061636bull;     // "pack"
constexpr uint64_t kBalanceStream = 0x62616c61ull;  // "bala"

inline SplitMix64 make_stream(uint64_t seed, uint64_t tag) {
  SplitMix64 mixer(seed ^ tag);
  return SplitMix64(mixer.next());
}

}  // namespace s1pack
