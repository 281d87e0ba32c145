// SentencePiece BPE encoding (identity normalizer), matching the sentencepiece library's output:
// normalization flags (dummy prefix, extra-whitespace removal, space escaping), user-defined symbols,
// score-ordered pair merges (ties: leftmost), and consecutive unknown pieces merged into one.
#include <algorithm>
#include <queue>
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
  std::vector<std::vector<std::pair<int, int>>> by_left(pieces_.size());
  for (const auto& [piece, id] : piece_ids_) {
    for (size_t k = 1; k < piece.size(); ++k) {
      const int left = lookup(piece.substr(0, k));
      const int right = lookup(piece.substr(k));
      if (left >= 0 && right >= 0) by_left[left].emplace_back(right, id);
    }
  }
  merge_start_.assign(1, 0);
  merge_rights_.clear();
  for (auto& v : by_left) {
    std::sort(v.begin(), v.end());
    merge_rights_.insert(merge_rights_.end(), v.begin(), v.end());
    merge_start_.push_back(static_cast<uint32_t>(merge_rights_.size()));
  }
  for (int c = 0; c < 128; ++c) byte_ids_[c] = lookup(std::string_view(reinterpret_cast<const char*>(&c), 1));
}

int SpBpeModel::merged_id(int left, int right) const {
  const auto first = merge_rights_.begin() + merge_start_[left];
  const auto last = merge_rights_.begin() + merge_start_[left + 1];
  const auto it = std::lower_bound(first, last, std::make_pair(right, -1));
  return it != last && it->first == right ? it->second : -1;
}

int SpBpeModel::lookup(std::string_view s) const {
  auto it = piece_ids_.find(s);
  return it == piece_ids_.end() ? -1 : it->second;
}

std::string SpBpeModel::normalize(std::string_view in) const {
  std::string out;
  if (in.empty()) return out;
  size_t i = 0;
  if (remove_extra_whitespaces) {
    while (i < in.size() && in[i] == ' ') ++i;
  }
  if (i == in.size()) return out;
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
  return out;
}

void SpBpeModel::encode(std::string_view text, std::vector<SpPiece>& out) const {
  const std::string norm = normalize(text);
  if (norm.empty()) return;
  struct Symbol {
    int prev, next;
    size_t start, len;
    bool freeze;
    int id;  // piece id of the symbol's text, -1 when it is no piece
  };
  struct Pair {
    int left, right;
    float score;
    size_t size;
    int id;
  };
  struct Worse {
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };
  std::vector<Symbol> symbols;
  symbols.reserve(norm.size());
  size_t pos = 0;
  while (pos < norm.size()) {
    size_t len = 0;
    bool freeze = false;
    for (std::string_view u : user_defined_) {
      if (norm.compare(pos, u.size(), u) == 0) {
        len = u.size();
        freeze = true;
        break;
      }
    }
    if (!len) len = std::min(utf8_len(static_cast<unsigned char>(norm[pos])), norm.size() - pos);
    const unsigned char first = norm[pos];
    const int id = len == 1 && first < 128 ? byte_ids_[first] : lookup(std::string_view(norm).substr(pos, len));
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, pos + len < norm.size() ? index + 1 : -1, pos, len, freeze, id});
    pos += len;
  }
  std::priority_queue<Pair, std::vector<Pair>, Worse> agenda;
  auto maybe_add = [&](int left, int right) {
    if (left < 0 || right < 0 || symbols[left].freeze || symbols[right].freeze) return;
    const size_t size = symbols[left].len + symbols[right].len;
    int id;
    if (symbols[left].id >= 0 && symbols[right].id >= 0) {
      id = merged_id(symbols[left].id, symbols[right].id);
    } else {  // a symbol that is no piece: only the string can tell
      id = lookup(std::string_view(norm).substr(symbols[left].start, size));
    }
    if (id < 0) return;
    agenda.push({left, right, scores_[id], size, id});
  };
  for (size_t i = 1; i < symbols.size(); ++i) maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[top.left];
    Symbol& r = symbols[top.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.size) continue;
    l.len += r.len;
    l.id = top.id;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = top.left;
    r.len = 0;
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }
  bool last_unknown = false;
  for (int i = 0; i >= 0 && !symbols.empty(); i = symbols[i].next) {
    const Symbol& s = symbols[i];
    std::string_view w = std::string_view(norm).substr(s.start, s.len);
    const int id = s.id < 0 ? 0 : s.id;
    if (id == 0 && last_unknown) {
      out.back().text.append(w);
    } else {
      out.push_back({id, std::string(w)});
    }
    last_unknown = id == 0;
  }
}

}  // namespace s1tok
