// SentencePiece BPE encoding (identity normalizer), matching the sentencepiece library's output:
// normalization flags (dummy prefix, extra-whitespace removal, space escaping), user-defined symbols,
// score-ordered pair merges (ties: leftmost), and consecutive unknown pieces merged into one. Merges are looked up by
// piece-id pairs and candidates kept in buckets by score rank, so no substring is hashed and no heap is kept.
#include <algorithm>
#include <functional>
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

}  // namespace

void SpBpeModel::init(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int> types) {
  if (pieces.size() != scores.size() || pieces.size() != types.size()) {
    throw std::invalid_argument("pieces, scores and types must have the same length");
  }
  pieces_ = std::move(pieces);
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
  // Rank of a piece: its place among the distinct scores, best first (equal scores tie, as floats compare).
  std::vector<float> distinct(scores);
  for (float& f : distinct) f = f == 0.0f ? 0.0f : f;  // -0 == +0
  std::sort(distinct.begin(), distinct.end(), std::greater<float>());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  ranks_ = static_cast<uint32_t>(distinct.size());
  rank_of_.resize(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    rank_of_[i] = static_cast<uint32_t>(std::lower_bound(distinct.begin(), distinct.end(), scores[i],
                                                         std::greater<float>()) - distinct.begin());
  }
  merges_.assign(slots, MergeSlot{kNoMerge, -1, 0});
  for (const auto& [key, id] : merges) {
    size_t slot = merge_hash(key, merge_shift_);
    while (merges_[slot].key != kNoMerge) slot = (slot + 1) & (slots - 1);
    merges_[slot] = {key, id, rank_of_[id]};
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
  using Pair = SpScratch::Pair;
  std::vector<SpScratch::Symbol>& symbols = scratch.symbols;
  symbols.clear();
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
  // The agenda: candidate pairs bucketed by the rank of the piece they merge into (best score first), each bucket
  // a min-heap on the left position (sentencepiece's tie order), with a bitmap of the non-empty buckets.
  if (scratch.buckets.size() < ranks_) scratch.buckets.resize(ranks_);
  if (scratch.occupied.size() * 64 < ranks_) scratch.occupied.resize((ranks_ + 63) / 64, 0);
  std::vector<std::vector<Pair>>& buckets = scratch.buckets;
  std::vector<uint64_t>& occupied = scratch.occupied;
  uint32_t lowest = UINT32_MAX;  // no non-empty bucket below this rank
  const auto later = [](const Pair& a, const Pair& b) { return a.left > b.left; };
  // The id of the piece that symbols `l` + `r` merge into (-1: none); `rank` receives its rank.
  const auto merged = [&](const SpScratch::Symbol& l, const SpScratch::Symbol& r, uint32_t* rank) {
    if (l.id >= 0 && r.id >= 0) {
      const MergeSlot* m = merge_of(l.id, r.id);
      if (m == nullptr) return -1;
      *rank = m->rank;
      return m->id;
    }
    const int id = lookup(s.substr(l.start, l.len + r.len));  // a symbol that is no piece: only the string tells
    if (id >= 0) *rank = rank_of_[id];
    return id;
  };
  const auto push = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const SpScratch::Symbol& l = symbols[left];
    const SpScratch::Symbol& r = symbols[right];
    uint32_t rank;
    if (l.freeze || r.freeze || merged(l, r, &rank) < 0) return;
    std::vector<Pair>& bucket = buckets[rank];
    bucket.push_back({static_cast<uint32_t>(left), static_cast<uint32_t>(right), l.len + r.len});
    std::push_heap(bucket.begin(), bucket.end(), later);
    occupied[rank >> 6] |= uint64_t{1} << (rank & 63);
    lowest = std::min(lowest, rank);
  };
  const auto pop = [&](Pair* top) {
    if (lowest == UINT32_MAX) return false;
    size_t word = lowest >> 6;
    uint64_t bits = occupied[word] & (~uint64_t{0} << (lowest & 63));
    while (bits == 0) {
      if (++word == occupied.size()) return false;
      bits = occupied[word];
    }
    const uint32_t rank = static_cast<uint32_t>(word * 64 + __builtin_ctzll(bits));
    lowest = rank;
    std::vector<Pair>& bucket = buckets[rank];
    std::pop_heap(bucket.begin(), bucket.end(), later);
    *top = bucket.back();
    bucket.pop_back();
    if (bucket.empty()) occupied[word] &= ~(uint64_t{1} << (rank & 63));
    return true;
  };
  for (size_t i = 1; i < symbols.size(); ++i) push(static_cast<int>(i) - 1, static_cast<int>(i));
  Pair top;
  while (pop(&top)) {
    SpScratch::Symbol& l = symbols[top.left];
    SpScratch::Symbol& r = symbols[top.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.size) continue;  // stale: a side has merged since
    uint32_t rank;
    l.id = merged(l, r, &rank);
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = static_cast<int>(top.left);
    r.len = 0;
    push(l.prev, static_cast<int>(top.left));
    push(static_cast<int>(top.left), l.next);
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
