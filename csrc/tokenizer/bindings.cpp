// pybind11 bindings: megatron_s1._tokenizer (dynamic scientific tokenizer fast path).
// Inputs are converted to C++ strings under the GIL; planning runs on std::threads with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <unordered_set>

#include "dynamic_tokenizer.h"

namespace py = pybind11;
using namespace s1tok;

namespace {

std::unique_ptr<Encoder> make_encoder(py::list tokens, py::list domains, py::list detectors,
                                      std::vector<uint32_t> decimal_digits, bool rules_validator, bool strict_tags,
                                      bool rescan_detected, bool protein_skips_nucleotides) {
  std::vector<TokenEntry> toks;
  for (py::handle h : tokens) {
    auto t = h.cast<py::tuple>();
    toks.push_back({t[0].cast<std::string>(), t[1].cast<int>(), t[2].cast<int>(), t[3].cast<int>()});
  }
  std::vector<std::unique_ptr<SpBpeModel>> models;
  for (py::handle h : domains) {
    auto d = h.cast<py::dict>();
    auto m = std::make_unique<SpBpeModel>();
    m->offset = d["offset"].cast<int>();
    m->add_dummy_prefix = d["add_dummy_prefix"].cast<bool>();
    m->remove_extra_whitespaces = d["remove_extra_whitespaces"].cast<bool>();
    m->escape_whitespaces = d["escape_whitespaces"].cast<bool>();
    m->added_override = d["added_override"].cast<std::unordered_map<int, int>>();
    m->base_remap = d["base_remap"].cast<std::unordered_map<int, int>>();
    m->init(d["pieces"].cast<std::vector<std::string>>(), d["scores"].cast<std::vector<float>>(),
            d["types"].cast<std::vector<int>>());
    models.push_back(std::move(m));
  }
  std::vector<std::pair<int, int>> dets;
  for (py::handle h : detectors) {
    auto t = h.cast<py::tuple>();
    const auto kind = t[0].cast<std::string>();
    int k = kind == "smiles" ? kSmiles : kind == "protein" ? kProtein : kind == "xna" ? kXna : -1;
    if (k < 0) throw std::invalid_argument("unknown detector kind: " + kind);
    dets.emplace_back(k, t[1].cast<int>());
  }
  return std::make_unique<Encoder>(std::move(toks), std::move(models), std::move(dets), decimal_digits,
                                   rules_validator, strict_tags, rescan_detected, protein_skips_nucleotides);
}

py::list spans_of(const Plan& p) {
  py::list out;
  for (const auto& v : p.spans) {
    for (const auto& s : v) out.append(py::str(s));
  }
  return out;
}

// (unique SMILES candidates without a verdict, indices of the documents that met them)
py::tuple pending_of(const Plan& p) {
  std::unordered_set<std::string_view> seen;
  py::list candidates, documents;
  for (size_t i = 0; i < p.pending.size(); ++i) {
    if (p.pending[i].empty()) continue;
    documents.append(i);
    for (const auto& c : p.pending[i]) {
      if (seen.insert(c).second) candidates.append(py::str(c));
    }
  }
  return py::make_tuple(candidates, documents);
}

// The ids of each document; span_ids: tiktoken's id list per span of plan.spans(). The Python objects are read
// and built directly (the generic list casters cost more than the splicing itself).
py::list assemble(const Encoder& e, const Plan& plan, const py::list& span_ids) {
  std::vector<int32_t> ids;
  std::vector<size_t> starts{0};
  starts.reserve(PyList_GET_SIZE(span_ids.ptr()) + 1);
  for (py::handle h : span_ids) {
    PyObject* span = h.ptr();
    if (!PyList_Check(span)) throw py::type_error("assemble: span_ids must be lists of ints");
    const Py_ssize_t n = PyList_GET_SIZE(span);
    for (Py_ssize_t j = 0; j < n; ++j) {
      const long id = PyLong_AsLong(PyList_GET_ITEM(span, j));
      if (id == -1 && PyErr_Occurred()) throw py::error_already_set();
      ids.push_back(static_cast<int32_t>(id));
    }
    starts.push_back(ids.size());
  }
  std::vector<std::vector<int32_t>> docs;
  {
    py::gil_scoped_release release;
    docs = e.assemble(plan, ids, starts);
  }
  py::list out(docs.size());
  for (size_t t = 0; t < docs.size(); ++t) {
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(docs[t].size()));
    if (list == nullptr) throw py::error_already_set();
    for (size_t j = 0; j < docs[t].size(); ++j) PyList_SET_ITEM(list, j, PyLong_FromLong(docs[t][j]));
    PyList_SET_ITEM(out.ptr(), t, list);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_tokenizer, m) {
  m.doc() = "C++ fast path of the Intern-S1 dynamic tokenizer (see megatron_s1/tokenizer/dynamic.py)";

  py::class_<Plan>(m, "Plan")
      .def("spans", &spans_of, "base-BPE texts of all documents, in order (encode each with tiktoken)")
      .def("pending", &pending_of,
           "(SMILES candidates without a verdict, documents that met them): set_verdicts, then replan those")
      .def("__len__", [](const Plan& p) { return p.ops.size(); });

  py::class_<Encoder>(m, "Encoder")
      .def(py::init(&make_encoder), py::arg("tokens"), py::arg("domains"), py::arg("detectors"),
           py::arg("decimal_digits"), py::arg("rules_validator"), py::arg("strict_tags"), py::arg("rescan_detected"),
           py::arg("protein_skips_nucleotides"))
      .def("set_base_vocabulary", &Encoder::set_base_vocabulary, py::arg("tokens"), py::arg("ids"),
           "tiktoken's mergeable ranks (bytes, id): ASCII base-BPE text is then encoded in C++")
      .def("encode_base_ascii", &Encoder::encode_base_ascii, py::arg("text"),
           "base-BPE ids of ASCII text (None for other text or without a base vocabulary; testing hook)")
      .def("set_verdicts", &Encoder::set_verdicts, py::arg("candidates"), py::arg("verdicts"))
      .def(
          "plan",
          [](const Encoder& e, const std::vector<std::string>& texts, int threads) {
            std::unique_ptr<Plan> p;
            {
              py::gil_scoped_release release;  // std::invalid_argument becomes ValueError
              p = e.plan(texts, threads);
            }
            return p;
          },
          py::arg("texts"), py::arg("threads") = 1)
      .def(
          "replan",
          [](const Encoder& e, Plan& p, const std::vector<size_t>& which, const std::vector<std::string>& texts,
             int threads) {
            py::gil_scoped_release release;
            e.replan(p, which, texts, threads);
          },
          py::arg("plan"), py::arg("which"), py::arg("texts"), py::arg("threads") = 1)
      .def("assemble", &assemble, py::arg("plan"), py::arg("span_ids"))
      .def(
          "encode_domain",
          [](const Encoder& e, int domain, const std::string& text) {
            py::list out;
            for (const auto& [piece, id] : e.encode_domain(domain, text)) {
              out.append(py::make_tuple(py::str(piece), id));
            }
            return out;
          },
          py::arg("domain"), py::arg("text"), "[(piece, local id)] like SentencePieceProcessor.encode")
      .def("rules_ok", &Encoder::rules_ok, py::arg("candidate"))
      .def("smiles_matches", &Encoder::smiles_matches, py::arg("text"),
           "byte spans of the SMILES regex matches (before length/letter/validity checks)");
}
