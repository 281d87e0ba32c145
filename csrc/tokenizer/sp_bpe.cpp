// SentencePiece BPE encoding (identity normalizer), matching the sentencepiece library's output:
// normalization flags (dummy prefix, extra-whitespace removal, space escaping), user-defined symbols,
// score-ordered pair merges (ties: leftmost), and consecutive unknown pieces merged into one.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "dynamic_tokenizer.h"

namespace s1tok {

namespace {

const std::string kSpaceSymbol = "\xe2\x96\x81";  // U+2581

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

uint64_t merge_key(int left, int right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

size_t merge_hash(uint64_t key, int shift) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift); }

// Heap key of a candidate pair: higher merged-piece score first, then the leftmost pair (sentencepiece's order).
uint64_t agenda_key(float score, uint32_t left) {
  if (score == 0.0f) score = 0.0f;  // -0 ties with +0, as in a float comparison
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof bits);
  bits = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;  // order-preserving map of the float onto uint32
  return (static_cast<uint64_t>(bits) << 32) | (0xFFFFFFFFu - left);
}

}  // namespace

void SpBpeModel::init(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int> types) {
  if (pieces.size() != scores.size() || pieces.size() != types.size()) {
    throw std::invalid_argument("pieces, scores and types must have the same length");
  }
  pieces_ = std::move(pieces);
  scores_ = std::move(scores);
  piece_ids_.clear();
  user_defined_.clear();
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const int t = types[i];
    if (t == kNormal || t == kUserDefined || t == kUnused) {
      piece_ids_.emplace(std::string_view(pieces_[i]), static_cast<int>(i));
    }
    if (t == kUserDefined) user_defined_.emplace_back(pieces_[i]);
  }
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](std::string_view a, std::string_view b) { return a.size() > b.size(); });
  std::vector<std::pair<uint64_t, int>> merges;  // (left << 32 | right, concatenated piece)
  for (const auto& [piece, id] : piece_ids_) {
    for (size_t k = 1; k < piece.size(); ++k) {
      const int left = lookup(piece.substr(0, k));
      const int right = lookup(piece.substr(k));
      if (left >= 0 && right >= 0) merges.emplace_back(merge_key(left, right), id);
    }
  }
  size_t slots = 16;
  merge_shift_ = 60;
  while (slots < 2 * merges.size() + 1) {
    slots *= 2;
    --merge_shift_;
  }
  merges_.assign(slots, MergeSlot{kNoMerge, -1, 0.0f});
  for (const auto& [key, id] : merges) {
    size_t slot = merge_hash(key, merge_shift_);
    while (merges_[slot].key != kNoMerge) slot = (slot + 1) & (slots - 1);
    merges_[slot] = {key, id, scores_[id]};
  }
  for (int c = 0; c < 128; ++c) byte_ids_[c] = lookup(std::string_view(reinterpret_cast<const char*>(&c), 1));
}

const SpBpeModel::MergeSlot* SpBpeModel::merge_of(int left, int right) const {
  const uint64_t key = merge_key(left, right);
  const size_t mask = merges_.size() - 1;
  for (size_t slot = merge_hash(key, merge_shift_);; slot = (slot + 1) & mask) {
    const MergeSlot& m = merges_[slot];
    if (m.key == key) return &m;
    if (m.key == kNoMerge) return nullptr;
  }
}

int SpBpeModel::lookup(std::string_view s) const {
  auto it = piece_ids_.find(s);
  return it == piece_ids_.end() ? -1 : it->second;
}

void SpBpeModel::normalize(std::string_view in, std::string& out) const {
  out.clear();
  if (in.empty()) return;
  size_t i = 0;
  if (remove_extra_whitespaces) {
    while (i < in.size() && in[i] == ' ') ++i;
  }
  if (i == in.size()) return;
  out.reserve(in.size() + 8);
  if (add_dummy_prefix) out += escape_whitespaces ? kSpaceSymbol : std::string(" ");
  bool prev_space = remove_extra_whitespaces;
  while (i < in.size()) {
    const size_t len = utf8_len(static_cast<unsigned char>(in[i]));
    const bool is_space = in[i] == ' ';
    if (!(prev_space && is_space)) {
      if (is_space && escape_whitespaces) {
        out += kSpaceSymbol;
      } else {
        out.append(in.substr(i, len));
      }
      prev_space = is_space;
    }
    i += len;
    if (!remove_extra_whitespaces) prev_space = false;
  }
  if (remove_extra_whitespaces) {
    const std::string space = escape_whitespaces ? kSpaceSymbol : std::string(" ");
    while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0) {
      out.resize(out.size() - space.size());
    }
  }
}

void SpBpeModel::encode(std::string_view text, std::string& norm, std::vector<SpPiece>& out,
                        SpScratch& scratch) const {
  normalize(text, norm);
  if (norm.empty()) return;
  std::vector<SpScratch::Symbol>& symbols = scratch.symbols;
  std::vector<SpScratch::Pair>& agenda = scratch.agenda;
  symbols.clear();
  agenda.clear();
  const std::string_view s(norm);
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 0;
    bool freeze = false;
    for (std::string_view u : user_defined_) {
      if (s.compare(pos, u.size(), u) == 0) {
        len = u.size();
        freeze = true;
        break;
      }
    }
    if (!len) len = std::min(utf8_len(static_cast<unsigned char>(s[pos])), s.size() - pos);
    const unsigned char first = s[pos];
    const int id = len == 1 && first < 128 ? byte_ids_[first] : lookup(s.substr(pos, len));
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, pos + len < s.size() ? index + 1 : -1, static_cast<uint32_t>(pos),
                       static_cast<uint32_t>(len), id, freeze});
    pos += len;
  }
  // The id of the piece that symbols `left` + `right` merge into (-1: none); `score` receives its score.
  const auto merged = [&](const SpScratch::Symbol& l, const SpScratch::Symbol& r, float* score) {
    if (l.id >= 0 && r.id >= 0) {
      const MergeSlot* m = merge_of(l.id, r.id);
      if (m == nullptr) return -1;
      *score = m->score;
      return m->id;
    }
    const int id = lookup(s.substr(l.start, l.len + r.len));  // a symbol that is no piece: only the string tells
    if (id >= 0) *score = scores_[id];
    return id;
  };
  const auto candidate = [&](int left, int right) {
    const SpScratch::Symbol& l = symbols[left];
    const SpScratch::Symbol& r = symbols[right];
    float score;
    if (l.freeze || r.freeze || merged(l, r, &score) < 0) return false;
    agenda.push_back({agenda_key(score, static_cast<uint32_t>(left)), static_cast<uint32_t>(right), l.len + r.len});
    return true;
  };
  const auto worse = [](const SpScratch::Pair& a, const SpScratch::Pair& b) { return a.key < b.key; };
  for (size_t i = 1; i < symbols.size(); ++i) candidate(static_cast<int>(i) - 1, static_cast<int>(i));
  std::make_heap(agenda.begin(), agenda.end(), worse);
  const auto push = [&](int left, int right) {
    if (left >= 0 && right >= 0 && candidate(left, right)) std::push_heap(agenda.begin(), agenda.end(), worse);
  };
  while (!agenda.empty()) {
    std::pop_heap(agenda.begin(), agenda.end(), worse);
    const SpScratch::Pair top = agenda.back();
    agenda.pop_back();
    const int left = static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(top.key));
    SpScratch::Symbol& l = symbols[left];
    SpScratch::Symbol& r = symbols[top.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.size) continue;  // stale: a side has merged since
    float score;
    l.id = merged(l, r, &score);
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = left;
    r.len = 0;
    push(l.prev, left);
    push(left, l.next);
  }
  bool last_unknown = false;
  for (int i = 0; i >= 0 && !symbols.empty(); i = symbols[i].next) {
    const SpScratch::Symbol& sym = symbols[i];
    const int id = sym.id < 0 ? 0 : sym.id;
    if (id == 0 && last_unknown) {
      out.back().len += sym.len;
    } else {
      out.push_back({id, sym.start, sym.len});
    }
    last_unknown = id == 0;
  }
}

}  // namespace s1tok
