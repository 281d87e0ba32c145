// pybind11 bindings: megatron_s1._packing.
//
// Inputs are taken as C-contiguous arrays (the Python wrappers in megatron_s1/data/packing.py
// already hand over int64/float64 contiguous arrays, so no copy happens here). Outputs are
// std::vectors moved into numpy arrays that own them, so results are never copied either.
// Every heavy call runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "packing.h"

namespace py = pybind11;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& data, std::vector<py::ssize_t> shape) {
  auto owned = std::make_unique<std::vector<T>>(std::move(data));
  T* ptr = owned->data();
  py::capsule base(owned.get(), [](void* p) { delete static_cast<std::vector<T>*>(p); });
  owned.release();  // the capsule owns it now
  return py::array_t<T>(std::move(shape), ptr, base);
}

const int64_t* data_1d(const I64Array& a, const char* name) {
  if (a.ndim() != 1) throw std::invalid_argument(std::string(name) + " must be 1-D");
  return a.data();
}

py::tuple packs_to_numpy(s1pack::Packs&& packs) {
  const auto num_packs = static_cast<py::ssize_t>(packs.offsets.size());
  const auto num_samples = static_cast<py::ssize_t>(packs.samples.size());
  return py::make_tuple(to_numpy(std::move(packs.offsets), {num_packs}),
                        to_numpy(std::move(packs.samples), {num_samples}));
}

py::array_t<int64_t> assignment_to_numpy(s1pack::Assignment&& a, int64_t dp, int64_t k) {
  return to_numpy(std::move(a.ids), {static_cast<py::ssize_t>(a.steps),
                                     static_cast<py::ssize_t>(dp), static_cast<py::ssize_t>(k)});
}

}  // namespace

PYBIND11_MODULE(_packing, m) {
  m.doc() = "C++ core of sequence packing and VLBS balancing (see megatron_s1.data.packing).";

  m.def(
      "pack_next_fit",
      [](const I64Array& lengths, int64_t max_len, bool shuffle, uint64_t seed, bool truncate) {
        const int64_t* len = data_1d(lengths, "lengths");
        const int64_t n = lengths.shape(0);
        s1pack::Packs packs;
        {
          py::gil_scoped_release nogil;
          packs = s1pack::pack_next_fit(len, n, max_len, shuffle, seed, truncate);
        }
        return packs_to_numpy(std::move(packs));
      },
      py::arg("lengths"), py::arg("max_len"), py::arg("shuffle"), py::arg("seed"),
      py::arg("truncate"), "Next-fit packing in visiting order -> (pack_offsets, sample_indices).");

  m.def(
      "pack_best_fit_windowed",
      [](const I64Array& lengths, int64_t max_len, int64_t window, bool shuffle, uint64_t seed,
         bool truncate) {
        const int64_t* len = data_1d(lengths, "lengths");
        const int64_t n = lengths.shape(0);
        s1pack::Packs packs;
        {
          py::gil_scoped_release nogil;
          packs = s1pack::pack_best_fit_windowed(len, n, max_len, window, shuffle, seed, truncate);
        }
        return packs_to_numpy(std::move(packs));
      },
      py::arg("lengths"), py::arg("max_len"), py::arg("window"), py::arg("shuffle"),
      py::arg("seed"), py::arg("truncate"),
      "Windowed best-fit-decreasing packing -> (pack_offsets, sample_indices).");

  m.def(
      "pack_stats",
      [](const I64Array& lengths, int64_t max_len, const I64Array& offsets,
         const I64Array& samples) {
        const int64_t* len = data_1d(lengths, "lengths");
        const int64_t* off = data_1d(offsets, "pack_offsets");
        const int64_t* smp = data_1d(samples, "sample_indices");
        if (offsets.shape(0) < 1) throw std::invalid_argument("pack_offsets must not be empty");
        const int64_t n = lengths.shape(0), num_packs = offsets.shape(0) - 1;
        const int64_t num_samples = samples.shape(0);
        std::vector<int64_t> tokens(static_cast<size_t>(num_packs));
        std::vector<int64_t> sum_sq(static_cast<size_t>(num_packs));
        {
          py::gil_scoped_release nogil;
          s1pack::pack_stats(len, n, max_len, off, num_packs, smp, num_samples, tokens.data(),
                             sum_sq.data());
        }
        return py::make_tuple(to_numpy(std::move(tokens), {num_packs}),
                              to_numpy(std::move(sum_sq), {num_packs}));
      },
      py::arg("lengths"), py::arg("max_len"), py::arg("pack_offsets"), py::arg("sample_indices"),
      "Per-pack (tokens, sum of squared sample lengths), lengths clipped to max_len.");

  m.def(
      "balance_round_robin",
      [](int64_t num_packs, int64_t dp, int64_t packs_per_rank, bool drop_last) {
        s1pack::Assignment a;
        {
          py::gil_scoped_release nogil;
          a = s1pack::balance_round_robin(num_packs, dp, packs_per_rank, drop_last);
        }
        return assignment_to_numpy(std::move(a), dp, packs_per_rank);
      },
      py::arg("num_packs"), py::arg("dp"), py::arg("packs_per_rank"), py::arg("drop_last"),
      "Round-robin assignment -> int64 array (steps, dp, packs_per_rank), -1 = empty slot.");

  m.def(
      "balance_lpt_windowed",
      [](const F64Array& costs, int64_t dp, int64_t packs_per_rank, int64_t window_steps,
         uint64_t seed, bool drop_last) {
        if (costs.ndim() != 1) throw std::invalid_argument("costs must be 1-D");
        const double* c = costs.data();
        const int64_t n = costs.shape(0);
        s1pack::Assignment a;
        {
          py::gil_scoped_release nogil;
          a = s1pack::balance_lpt_windowed(c, n, dp, packs_per_rank, window_steps, seed,
                                           drop_last);
        }
        return assignment_to_numpy(std::move(a), dp, packs_per_rank);
      },
      py::arg("costs"), py::arg("dp"), py::arg("packs_per_rank"), py::arg("window_steps"),
      py::arg("seed"), py::arg("drop_last"),
      "VLBS assignment -> int64 array (steps, dp, packs_per_rank), -1 = empty slot.");
}
