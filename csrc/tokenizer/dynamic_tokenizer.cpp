// Detection scan, tag handling and batch planning of the dynamic tokenizer (reference:
// megatron_s1/tokenizer/detection.py and dynamic.py; the rules are described there).
#include "dynamic_tokenizer.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <stdexcept>
#include <thread>

namespace s1tok {

namespace {

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

uint32_t decode_at(std::string_view s, size_t p, size_t* len) {
  const unsigned char c = s[p];
  size_t n = utf8_len(c);
  if (p + n > s.size()) n = 1;
  *len = n;
  if (n == 1) return c;
  uint32_t cp = c & (0xFF >> (n + 1));
  for (size_t i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<unsigned char>(s[p + i]) & 0x3F);
  return cp;
}

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t p = 0; p < s.size();) {
    size_t len;
    out.push_back(decode_at(s, p, &len));
    p += len;
  }
  return out;
}

size_t count_chars(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool ascii_letter(uint32_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

bool nucleotide(unsigned char c) { return c == 'A' || c == 'T' || c == 'C' || c == 'G' || c == 'U'; }

// The release turns U+2581 ('\xe2\x96\x81') into a space before every base BPE call.
std::string space_symbol_to_space(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 3, "\xe2\x96\x81") == 0) {
      out.push_back(' ');
      i += 3;
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

bool in_ranges(uint32_t cp, const std::vector<std::pair<uint32_t, uint32_t>>& ranges) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(cp, UINT32_MAX));
  if (it == ranges.begin()) return false;
  --it;
  return cp >= it->first && cp <= it->second;
}

// SMILES units outside brackets.
struct SmilesTables {
  bool one_letter[128] = {};
  bool punct[128] = {};
  bool two_letter[128][128] = {};
  SmilesTables() {
    const char* two =
        "AcAgAlAmArAsAtAuBaBeBhBiBkBrCaCdCeCfClCmCnCoCrCsCuDbDsDyErEsEuFeFlFmFrGaGdGeHeHfHgHoHsInIrKrLaLiLrLuLv"
        "McMdMgMnMoMtNaNbNdNeNhNiNoNpOgOsPaPbPdPmPoPrPtPuRaRbReRfRgRhRnRuSbScSeSgSiSmSnSrTaTbTcTeThTiTlTmTsXeYbZnZr";
    for (const char* p = two; *p; p += 2) two_letter[(int)p[0]][(int)p[1]] = true;
    for (const char* p = "BCFHIKNOPSUVWYbcnops"; *p; ++p) one_letter[(int)*p] = true;
    for (const char* p = "().=-#@$%*:+/\\"; *p; ++p) punct[(int)*p] = true;
  }
};
const SmilesTables kSmilesTables;

// Sets used by the rule checker.
bool is_bond(uint32_t c) {
  return c == '-' || c == '=' || c == '#' || c == ':' || c == '/' || c == '\\' || c == '.' || c == '$';
}

bool rule_symbol(const std::u32string& s) {
  static const char* const kSymbols[] = {"B", "C", "N", "O", "P", "S", "F", "Cl", "Br", "I", "b", "c", "n", "o",
                                         "s", "p", "-", "=", "#", ":", "/", "\\", ".", "$", "[", "]", "(", ")",
                                         ";"};
  for (const char* sym : kSymbols) {
    size_t n = 0;
    while (sym[n]) ++n;
    if (n != s.size()) continue;
    bool same = true;
    for (size_t i = 0; i < n; ++i) same = same && s[i] == static_cast<unsigned char>(sym[i]);
    if (same) return true;
  }
  return false;
}

bool periodic(const std::u32string& s) {
  static const char* kTable =
      " H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y"
      " Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re"
      " Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg"
      " Cn Nh Fl Mc Lv Ts Og ";
  if (s.empty() || s.size() > 2) return false;
  for (uint32_t c : s) {
    if (!ascii_letter(c)) return false;
  }
  std::string needle = " ";
  for (uint32_t c : s) needle.push_back(static_cast<char>(c));
  needle.push_back(' ');
  return std::string_view(kTable).find(needle) != std::string_view::npos;
}

bool aromatic(uint32_t c) { return c == 'b' || c == 'c' || c == 'n' || c == 'o' || c == 's' || c == 'p'; }

}  // namespace

bool smiles_rules_ok(const std::u32string& t, const std::vector<std::pair<uint32_t, uint32_t>>& dec) {
  auto is_digit = [&](uint32_t c) { return (c >= '0' && c <= '9') || (c >= 0x80 && in_ranges(c, dec)); };
  std::map<std::u32string, bool> rings;
  int sq_open = 0, sq_close = 0, par_open = 0, par_close = 0, ring_digits = 0;
  bool all_lower = true;
  const size_t n = t.size();
  const size_t first_close = t.find(U']');
  size_t pos = 0;
  while (pos < n) {
    size_t step = 0;
    const uint32_t ch = t[pos];
    if (ch >= 'A' && ch <= 'Z') all_lower = false;
    if ((pos == n - 1 || pos == 0) && is_bond(ch)) return false;
    if (pos > 0 && is_bond(t[pos - 1]) && is_bond(ch)) return false;
    if (ch == '[') {
      step = 1;
      ++sq_open;
      if (sq_open > sq_close + 1 || pos == n - 1 || t.find(U']', pos + 1) == std::u32string::npos) return false;
      std::u32string inside;
      if (first_close != std::u32string::npos && first_close > pos + 1) inside = t.substr(pos + 1, first_close - pos - 1);
      // (?:[A-GI-Z]|[a-z]){3,} and \d{4,}; at most two digit groups.
      int letters = 0, digits = 0, groups = 0;
      for (uint32_t c : inside) {
        const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z' && c != 'H');
        letters = letter ? letters + 1 : 0;
        if (letters >= 3) return false;
        if (is_digit(c)) {
          if (digits == 0) ++groups;
          ++digits;
          if (digits >= 4) return false;
        } else {
          digits = 0;
        }
      }
      if (groups > 2) return false;
    }
    if (ch == ']') {
      step = 1;
      ++sq_close;
      if (sq_close > sq_open) return false;
    }
    if (ch == '(') {
      step = 1;
      ++par_open;
    }
    if (ch == ')') {
      step = 1;
      ++par_close;
      if (par_close > par_open) return false;
    }
    if (sq_open == sq_close) {
      if (is_digit(ch)) {
        ++ring_digits;
        step = 1;
        if (pos == 0 || (pos == 1 && t[0] != '%') || (pos > 1 && t[pos - 1] != '%' && t[pos - 2] != '%')) {
          const std::u32string label(1, ch);
          rings[label] = !rings[label];
        }
      }
      if (ch == '%') {
        if (pos + 2 >= n || !is_digit(t[pos + 1]) || !is_digit(t[pos + 2])) return false;
        step = 3;
        ++ring_digits;
        const std::u32string label = t.substr(pos + 1, 2);
        rings[label] = !rings[label];
      }
      if (step == 0) {
        if (pos + 1 < n && rule_symbol(t.substr(pos, 2))) {
          step = 2;
        } else if (rule_symbol(t.substr(pos, 1))) {
          step = 1;
        } else {
          return false;
        }
      }
    }
    pos += step ? step : 1;
  }
  if (sq_open != sq_close) return false;
  for (const auto& kv : rings) {
    if (kv.second) return false;
  }
  if (all_lower && ring_digits < 2) return false;
  // \[([^\[\]]*)\] scanned left to right
  for (size_t i = 0; i < n;) {
    if (t[i] != '[') {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < n && t[j] != '[' && t[j] != ']') ++j;
    if (j < n && t[j] == ']') {
      const std::u32string part = t.substr(i + 1, j - i - 1);
      if (part.empty() || part.find(U'(') != std::u32string::npos || part.find(U')') != std::u32string::npos) {
        return false;
      }
      if (periodic(part.substr(0, 1)) || aromatic(part[0]) || periodic(part.substr(0, 2))) return true;
      i = j + 1;
    } else {
      i = i + 1;
    }
  }
  return true;
}

Encoder::Encoder(std::vector<TokenEntry> tokens, std::vector<std::unique_ptr<SpBpeModel>> domains,
                 std::vector<std::pair<int, int>> detectors, const std::vector<uint32_t>& decimal_digits,
                 bool rules_validator, bool strict_tags, bool rescan_detected, bool protein_skips_nucleotides)
    : tokens_(std::move(tokens)),
      tokens_by_byte_(256),
      domains_(std::move(domains)),
      detectors_(std::move(detectors)),
      rules_validator_(rules_validator),
      strict_tags_(strict_tags),
      rescan_detected_(rescan_detected),
      protein_skips_nucleotides_(protein_skips_nucleotides) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].text.empty()) throw std::invalid_argument("empty added token");
    const unsigned char b = tokens_[i].text[0];
    token_first_byte_[b] = true;
    tokens_by_byte_[b].push_back(static_cast<int>(i));
  }
  for (auto& v : tokens_by_byte_) {
    std::sort(v.begin(), v.end(), [&](int a, int b) { return tokens_[a].text.size() > tokens_[b].text.size(); });
  }
  for (const auto& d : detectors_) {
    if (d.first < kSmiles || d.first > kXna) throw std::invalid_argument("unknown detector kind");
    if (d.second < 0 || d.second >= static_cast<int>(domains_.size())) {
      throw std::invalid_argument("detector domain out of range");
    }
  }
  std::vector<uint32_t> digits(decimal_digits);
  std::sort(digits.begin(), digits.end());
  for (uint32_t c : digits) {
    if (!decimal_ranges_.empty() && decimal_ranges_.back().second + 1 == c) {
      decimal_ranges_.back().second = c;
    } else {
      decimal_ranges_.emplace_back(c, c);
    }
  }
}

bool Encoder::is_decimal(uint32_t cp) const {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(cp, decimal_ranges_);
}

size_t Encoder::smiles_unit(std::string_view s, size_t p) const {
  const unsigned char c = s[p];
  if (c == '[') {
    if (p + 1 < s.size() && s[p + 1] != ']') {
      const size_t q = s.find(']', p + 1);
      if (q != std::string_view::npos) return q - p + 1;
    }
    return 0;
  }
  if (c < 0x80) {
    if (p + 1 < s.size() && static_cast<unsigned char>(s[p + 1]) < 0x80 && kSmilesTables.two_letter[c][(int)s[p + 1]]) {
      return 2;
    }
    if (kSmilesTables.one_letter[c] || kSmilesTables.punct[c] || (c >= '0' && c <= '9')) return 1;
    return 0;
  }
  size_t len;
  const uint32_t cp = decode_at(s, p, &len);
  return is_decimal(cp) ? len : 0;
}

bool Encoder::smiles_valid(std::string_view cand, Ctx& ctx) const {
  size_t letters = 0;
  for (unsigned char c : cand) letters += ascii_letter(c);
  if (letters < 5) return false;
  if (rules_validator_) return smiles_rules_ok(to_u32(cand), decimal_ranges_);
  {
    std::lock_guard<std::mutex> lock(verdict_mutex_);
    auto it = verdicts_.find(std::string(cand));
    if (it != verdicts_.end()) return it->second;
  }
  if (ctx.pending) ctx.pending->emplace_back(cand);
  return false;
}

std::vector<std::pair<size_t, size_t>> Encoder::smiles_matches(const std::string& text) const {
  std::vector<std::pair<size_t, size_t>> out;
  const std::string_view s(text);
  size_t start = 0;
  while (start < s.size()) {
    const unsigned char c = s[start];
    if (c != ':' && c != '.' && c != '=') {
      size_t p = start, best = 0;
      int count = 0;
      while (p < s.size()) {
        const size_t u = smiles_unit(s, p);
        if (!u) break;
        const bool bad_end = u == 1 && (s[p] == ':' || s[p] == '.' || s[p] == '=');
        p += u;
        ++count;
        if (count >= 10 && !bad_end) best = p;
      }
      if (best) {
        out.emplace_back(start, best);
        start = best;
        continue;
      }
    }
    start += utf8_len(c);
  }
  return out;
}

void Encoder::split_one(std::string_view text, size_t k, std::vector<Item>& out, Ctx& ctx) const {
  const int kind = detectors_[k].first;
  const int domain = detectors_[k].second;
  std::vector<std::pair<size_t, size_t>> matches;
  if (kind == kSmiles) {
    matches = smiles_matches(std::string(text));
  } else {
    size_t i = 0;
    while (i < text.size()) {
      const unsigned char c = text[i];
      auto allowed = [&](unsigned char x) { return kind == kProtein ? x >= 'A' && x <= 'Z' : nucleotide(x); };
      if (!allowed(c)) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < text.size() && allowed(static_cast<unsigned char>(text[j]))) ++j;
      if (j - i >= 27) matches.emplace_back(i, j);
      i = j;
    }
  }
  size_t pos = 0;
  for (const auto& m : matches) {
    const std::string_view cand = text.substr(m.first, m.second - m.first);
    if (kind == kSmiles) {  // protein and DNA/RNA runs may touch letters; SMILES may not
      if (count_chars(cand) < 10) continue;
      if (m.first > 0 && ascii_letter(static_cast<unsigned char>(text[m.first - 1]))) continue;
      if (m.second < text.size() && ascii_letter(static_cast<unsigned char>(text[m.second]))) continue;
      if (!smiles_valid(cand, ctx)) continue;
    } else if (kind == kProtein && protein_skips_nucleotides_ &&
               std::all_of(cand.begin(), cand.end(), [](char c) { return nucleotide(c); })) {
      continue;
    }
    if (m.first > pos) detect(text.substr(pos, m.first - pos), k + 1, out, ctx);
    out.push_back({1, domain, {}});
    if (rescan_detected_) {
      detect(cand, k + 1, out, ctx);
    } else {
      out.push_back({0, -1, cand});
    }
    out.push_back({2, domain, {}});
    pos = m.second;
  }
  if (pos < text.size()) detect(text.substr(pos), k + 1, out, ctx);
}

void Encoder::detect(std::string_view text, size_t k, std::vector<Item>& out, Ctx& ctx) const {
  if (text.empty()) return;
  if (k == detectors_.size()) {
    out.push_back({0, -1, text});
    return;
  }
  split_one(text, k, out, ctx);
}

std::vector<Encoder::Item> Encoder::items(std::string_view text, Ctx& ctx) const {
  std::vector<Item> out;
  int guard = 0;
  size_t pos = 0, plain_start = 0;
  auto flush = [&](size_t end) {
    if (end > plain_start) {
      const std::string_view part = text.substr(plain_start, end - plain_start);
      if (guard) {
        out.push_back({0, -1, part});
      } else {
        detect(part, 0, out, ctx);
      }
    }
  };
  while (pos < text.size()) {
    const unsigned char b = text[pos];
    int hit = -1;
    if (token_first_byte_[b]) {
      for (int idx : tokens_by_byte_[b]) {
        const std::string& t = tokens_[idx].text;
        if (text.compare(pos, t.size(), t) == 0) {
          hit = idx;
          break;
        }
      }
    }
    if (hit < 0) {
      ++pos;
      continue;
    }
    flush(pos);
    out.push_back({3, hit, text.substr(pos, tokens_[hit].text.size())});
    const int kind = tokens_[hit].kind;
    if (kind == kTagBegin || kind == kProtectBegin) ++guard;
    if ((kind == kTagEnd || kind == kProtectEnd) && guard > 0) --guard;
    pos += tokens_[hit].text.size();
    plain_start = pos;
  }
  flush(text.size());
  return out;
}

void Encoder::check_balanced(std::string_view text) const {
  std::vector<std::pair<int, size_t>> stack;  // token index, byte offset
  auto quote = [](const std::string& s) { return "'" + s + "'"; };
  auto at = [&](size_t byte) { return std::to_string(count_chars(text.substr(0, byte))); };
  size_t pos = 0;
  while (pos < text.size()) {
    const unsigned char b = text[pos];
    int hit = -1;
    if (token_first_byte_[b]) {
      for (int idx : tokens_by_byte_[b]) {
        if (text.compare(pos, tokens_[idx].text.size(), tokens_[idx].text) == 0) {
          hit = idx;
          break;
        }
      }
    }
    if (hit < 0) {
      ++pos;
      continue;
    }
    const TokenEntry& tok = tokens_[hit];
    if (tok.kind == kTagBegin || tok.kind == kProtectBegin) {
      stack.emplace_back(hit, pos);
    } else if (tok.kind == kTagEnd || tok.kind == kProtectEnd) {
      const std::string opener = "<" + tok.text.substr(2);
      if (stack.empty()) {
        throw std::invalid_argument("unbalanced tag: " + quote(tok.text) + " at char " + at(pos) +
                                    " closes nothing; add " + quote(opener) +
                                    " before it or pass on_unbalanced='ignore'");
      }
      const auto top = stack.back();
      stack.pop_back();
      const std::string& top_text = tokens_[top.first].text;
      const std::string expected = "</" + top_text.substr(1);
      if (expected != tok.text) {
        throw std::invalid_argument("unbalanced tag: " + quote(tok.text) + " at char " + at(pos) + " closes " +
                                    quote(top_text) + " opened at char " + at(top.second) + "; close with " +
                                    quote(expected) + " first or pass on_unbalanced='ignore'");
      }
    }
    pos += tok.text.size();
  }
  if (!stack.empty()) {
    const std::string& t = tokens_[stack.back().first].text;
    throw std::invalid_argument("unbalanced tag: " + quote(t) + " at char " + at(stack.back().second) +
                                " is never closed; add " + quote("</" + t.substr(1)) +
                                " or pass on_unbalanced='ignore'");
  }
}

void Encoder::encode_one(std::string_view text, Plan& plan, size_t index, SpScratch& scratch) const {
  if (strict_tags_) check_balanced(text);
  Ctx ctx;
  if (!rules_validator_) ctx.pending = &plan.pending[index];
  const std::vector<Item> its = items(text, ctx);
  std::vector<int32_t>& ops = plan.ops[index];
  std::vector<std::string>& spans = plan.spans[index];
  std::vector<int>& span_domain = plan.span_domain[index];
  std::vector<int32_t> base_ids;
  auto add_span = [&](std::string_view s, int domain) {
    if (s.empty()) return;
    std::string text = s.find("\xe2\x96\x81") == std::string_view::npos ? std::string(s) : space_symbol_to_space(s);
    base_ids.clear();
    if (base_ && base_->encode_ascii(text, base_ids)) {
      for (int32_t id : base_ids) {
        if (domain >= 0) {  // as assemble() does for a span
          const auto& remap = domains_[domain]->base_remap;
          const auto it = remap.find(id);
          if (it != remap.end()) id = it->second;
        }
        ops.push_back(id);
      }
      return;
    }
    spans.push_back(std::move(text));
    span_domain.push_back(domain);
    ops.push_back(-static_cast<int32_t>(spans.size()));
  };
  std::vector<int> stack;
  std::vector<SpPiece> pieces;
  std::string norm;
  for (const Item& it : its) {
    const int top = stack.empty() ? -1 : stack.back();
    switch (it.type) {
      case 0:
        if (top < 0) {
          add_span(it.text, -1);
        } else {
          const SpBpeModel& m = *domains_[top];
          pieces.clear();
          m.encode(it.text, norm, pieces, scratch);
          for (const SpPiece& p : pieces) {
            if (p.id == 0) {
              add_span(std::string_view(norm).substr(p.start, p.len), top);  // fallback: base BPE, remapped
            } else {
              auto o = m.added_override.find(p.id);
              ops.push_back(o != m.added_override.end() ? o->second : m.offset + p.id);
            }
          }
        }
        break;
      case 1:
        stack.push_back(it.value);
        break;
      case 2:
        if (!stack.empty()) stack.pop_back();
        break;
      case 3: {
        const TokenEntry& tok = tokens_[it.value];
        if (tok.kind == kProtectBegin || tok.kind == kProtectEnd) {
          add_span(tok.text, top);
        } else {
          ops.push_back(tok.id);
          if (tok.kind == kTagBegin) stack.push_back(tok.domain);
          if (tok.kind == kTagEnd && !stack.empty()) stack.pop_back();
        }
        break;
      }
    }
  }
}

namespace {

// fn(i, scratch) for i < n on up to `threads` threads, each with its own SpScratch.
template <class F>
void parallel_for(size_t n, int threads, F&& fn) {
  const int workers = static_cast<int>(std::max<size_t>(1, std::min<size_t>(n, std::max(1, threads))));
  if (workers <= 1) {
    SpScratch scratch;
    for (size_t i = 0; i < n; ++i) fn(i, scratch);
    return;
  }
  std::atomic<size_t> next{0};
  std::vector<std::string> errors(workers);
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&, w] {
      try {
        SpScratch scratch;
        for (size_t i = next++; i < n; i = next++) fn(i, scratch);
      } catch (const std::exception& e) {
        errors[w] = e.what();
        next = n;
      }
    });
  }
  for (auto& t : pool) t.join();
  for (const auto& e : errors) {
    if (!e.empty()) throw std::invalid_argument(e);
  }
}

}  // namespace

void Encoder::set_base_vocabulary(const std::vector<std::string>& tokens, const std::vector<int>& ids) {
  auto base = std::make_unique<ByteLevelBpe>();
  base->init(tokens, ids);
  base_ = std::move(base);
}

void Encoder::set_verdicts(const std::vector<std::string>& candidates, const std::vector<bool>& verdicts) {
  if (candidates.size() != verdicts.size()) throw std::invalid_argument("candidates/verdicts length mismatch");
  std::lock_guard<std::mutex> lock(verdict_mutex_);
  if (verdicts_.size() > (1u << 22)) verdicts_.clear();
  for (size_t i = 0; i < candidates.size(); ++i) verdicts_[candidates[i]] = verdicts[i];
}

std::unique_ptr<Plan> Encoder::plan(const std::vector<std::string>& texts, int threads) const {
  auto p = std::make_unique<Plan>();
  p->ops.resize(texts.size());
  p->spans.resize(texts.size());
  p->span_domain.resize(texts.size());
  p->pending.resize(texts.size());
  parallel_for(texts.size(), threads, [&](size_t i, SpScratch& scratch) { encode_one(texts[i], *p, i, scratch); });
  return p;
}

void Encoder::replan(Plan& plan, const std::vector<size_t>& which, const std::vector<std::string>& texts,
                     int threads) const {
  if (which.size() != texts.size()) throw std::invalid_argument("replan: which/texts length mismatch");
  for (size_t i : which) {
    if (i >= plan.ops.size()) throw std::invalid_argument("replan: document index out of range");
    plan.ops[i].clear();
    plan.spans[i].clear();
    plan.span_domain[i].clear();
    plan.pending[i].clear();
  }
  parallel_for(texts.size(), threads,
               [&](size_t j, SpScratch& scratch) { encode_one(texts[j], plan, which[j], scratch); });
}

std::vector<std::vector<int32_t>> Encoder::assemble(const Plan& plan, const std::vector<int32_t>& ids,
                                                    const std::vector<size_t>& starts) const {
  std::vector<std::vector<int32_t>> out(plan.ops.size());
  size_t base = 0;
  for (size_t t = 0; t < plan.ops.size(); ++t) {
    std::vector<int32_t>& dst = out[t];
    dst.reserve(plan.ops[t].size() * 2);
    for (int32_t op : plan.ops[t]) {
      if (op >= 0) {
        dst.push_back(op);
        continue;
      }
      const size_t k = base + static_cast<size_t>(-op - 1);
      if (k + 1 >= starts.size()) throw std::invalid_argument("assemble: fewer span encodings than spans");
      const int domain = plan.span_domain[t][k - base];
      const auto first = ids.begin() + starts[k], last = ids.begin() + starts[k + 1];
      if (domain < 0 || domains_[domain]->base_remap.empty()) {
        dst.insert(dst.end(), first, last);
      } else {
        const auto& remap = domains_[domain]->base_remap;
        for (auto id = first; id != last; ++id) {
          auto it = remap.find(*id);
          dst.push_back(it == remap.end() ? *id : it->second);
        }
      }
    }
    base += plan.spans[t].size();
  }
  if (base + 1 != starts.size()) throw std::invalid_argument("assemble: more span encodings than spans");
  return out;
}

std::vector<std::pair<std::string, int>> Encoder::encode_domain(int domain, const std::string& text) const {
  if (domain < 0 || domain >= static_cast<int>(domains_.size())) throw std::out_of_range("domain index");
  std::vector<SpPiece> pieces;
  std::string norm;
  SpScratch scratch;
  domains_[domain]->encode(text, norm, pieces, scratch);
  std::vector<std::pair<std::string, int>> out;
  for (const SpPiece& p : pieces) out.emplace_back(norm.substr(p.start, p.len), p.id);
  return out;
}

std::optional<std::vector<int32_t>> Encoder::encode_base_ascii(const std::string& text) const {
  std::vector<int32_t> ids;
  if (!base_ || !base_->encode_ascii(text, ids)) return std::nullopt;
  return ids;
}

bool Encoder::rules_ok(const std::string& candidate) const {
  return smiles_rules_ok(to_u32(candidate), decimal_ranges_);
}

}  // namespace s1tok
