// Byte-level BPE of ASCII text, id for id what tiktoken's CoreBPE.encode_ordinary returns with the Qwen2
// pre-tokenizer pattern (megatron_s1/tokenizer/bpe.py): on ASCII the pattern's Unicode classes are plain byte
// classes, so it is spelled out here; text with any other byte is left to tiktoken.
#include <stdexcept>

#include "dynamic_tokenizer.h"

namespace s1tok {

namespace {

enum ByteClass : uint8_t { kOther = 0, kLetter = 1, kDigit = 2, kSpace = 3 };

struct ByteClasses {
  uint8_t of[128] = {};
  ByteClasses() {
    for (int c = 'A'; c <= 'Z'; ++c) of[c] = of[c + 32] = kLetter;
    for (int c = '0'; c <= '9'; ++c) of[c] = kDigit;
    for (int c : {'\t', '\n', '\v', '\f', '\r', ' '}) of[c] = kSpace;  // \s (Unicode White_Space) on ASCII
  }
};
const ByteClasses kClasses;

uint8_t byte_class(char c) { return kClasses.of[static_cast<unsigned char>(c)]; }
bool newline(char c) { return c == '\r' || c == '\n'; }
char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

}  // namespace

// End of the pre-token that starts at i: the first alternative of
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// that matches there, with the regex's greedy / backtracking semantics.
size_t ByteLevelBpe::pretoken_end(std::string_view s, size_t i) {
  const size_t n = s.size();
  const char c = s[i];
  if (c == '\'' && i + 1 < n) {
    const char a = lower(s[i + 1]);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 < n) {
      const char b = lower(s[i + 2]);
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
  }
  const uint8_t k = byte_class(c);
  size_t j = i;
  if (k != kLetter && k != kDigit && !newline(c) && i + 1 < n && byte_class(s[i + 1]) == kLetter) j = i + 1;
  if (byte_class(s[j]) == kLetter) {
    while (j < n && byte_class(s[j]) == kLetter) ++j;
    return j;
  }
  if (k == kDigit) return i + 1;
  j = c == ' ' && i + 1 < n && byte_class(s[i + 1]) == kOther ? i + 1 : i;
  if (byte_class(s[j]) == kOther) {
    while (j < n && byte_class(s[j]) == kOther) ++j;
    while (j < n && newline(s[j])) ++j;
    return j;
  }
  size_t end = i, last_newline = n;  // c is whitespace: the run [i, end)
  for (; end < n && byte_class(s[end]) == kSpace; ++end) {
    if (newline(s[end])) last_newline = end;
  }
  if (last_newline != n) return last_newline + 1;  // \s*[\r\n]+ backs off to the run's last newline
  if (end == n || end - i == 1) return end;        // \s+(?!\S) at the end, else \s+
  return end - 1;                                  // \s+(?!\S): leave the last space to the next pre-token
}

void ByteLevelBpe::init(const std::vector<std::string>& tokens, const std::vector<int>& ids) {
  if (tokens.size() != ids.size()) throw std::invalid_argument("base vocabulary: tokens and ids differ in length");
  tokens_ = tokens;
  ranks_.clear();
  ranks_.reserve(tokens_.size());
  for (size_t i = 0; i < tokens_.size(); ++i) ranks_.emplace(std::string_view(tokens_[i]), ids[i]);
}

int ByteLevelBpe::rank(std::string_view bytes) const {
  const auto it = ranks_.find(bytes);
  return it == ranks_.end() ? kNoRank : it->second;
}

// tiktoken's byte_pair_encode: merge the adjacent pair whose concatenation has the lowest rank (leftmost on ties)
// until none is in the vocabulary.
bool ByteLevelBpe::encode_piece(std::string_view piece, std::vector<int32_t>& out,
                                std::vector<std::pair<size_t, int>>& parts) const {
  const int whole = rank(piece);
  if (whole != kNoRank) {
    out.push_back(whole);
    return true;
  }
  if (piece.size() == 1) return false;  // a byte outside the vocabulary: let tiktoken report it
  parts.clear();
  for (size_t i = 0; i + 1 < piece.size(); ++i) parts.emplace_back(i, rank(piece.substr(i, 2)));
  parts.emplace_back(piece.size() - 1, kNoRank);
  parts.emplace_back(piece.size(), kNoRank);
  const auto pair_rank = [&](size_t i) {
    return i + 3 < parts.size() ? rank(piece.substr(parts[i].first, parts[i + 3].first - parts[i].first)) : kNoRank;
  };
  while (true) {
    int best = kNoRank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      if (parts[i].second < best) {
        best = parts[i].second;
        at = i;
      }
    }
    if (best == kNoRank) break;
    if (at > 0) parts[at - 1].second = pair_rank(at - 1);
    parts[at].second = pair_rank(at);
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const int id = rank(piece.substr(parts[i].first, parts[i + 1].first - parts[i].first));
    if (id == kNoRank) return false;
    out.push_back(id);
  }
  return true;
}

bool ByteLevelBpe::encode_ascii(std::string_view text, std::vector<int32_t>& out) const {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  const size_t mark = out.size();
  std::vector<std::pair<size_t, int>> parts;  // (start, rank of the pair starting there), as tiktoken
  for (size_t i = 0; i < text.size();) {
    const size_t end = pretoken_end(text, i);
    if (!encode_piece(text.substr(i, end - i), out, parts)) {
      out.resize(mark);
      return false;
    }
    i = end;
  }
  return true;
}

}  // namespace s1tok
