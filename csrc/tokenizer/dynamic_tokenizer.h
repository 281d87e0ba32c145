// Dynamic scientific tokenizer, C++ fast path (see megatron_s1/tokenizer/dynamic.py for the reference).
//
// Text (UTF-8, already NFC) is cut at added tokens, untagged stretches are scanned by the SMILES / protein /
// DNA-RNA detectors, and each span is encoded by its domain's SentencePiece BPE model (re-implemented here:
// identity normalizer, score-ordered pair merges, unknown runs merged). ASCII base-BPE stretches are encoded here
// too (ByteLevelBpe); the others are returned as "spans" for tiktoken to encode, and `assemble` splices their ids
// back.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace s1tok {

enum TokenKind { kSpecial = 0, kTagBegin = 1, kTagEnd = 2, kProtectBegin = 3, kProtectEnd = 4 };
enum DetectorKind { kSmiles = 0, kProtein = 1, kXna = 2 };

// SentencePiece piece types.
enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct SpPiece {
  int id;          // local id, 0 = unknown run
  uint32_t start;  // byte range [start, start + len) of the normalized text ('▁' for escaped spaces)
  uint32_t len;
};

// Working memory of SpBpeModel::encode, reused across the calls of one thread.
struct SpScratch {
  struct Symbol {
    int prev, next;
    uint32_t start, len;
    int id;  // piece id of the symbol's text, -1 when it is no piece
    bool freeze;
  };
  struct Pair {
    uint32_t left, right;
    uint32_t size;  // bytes of the merged text: the pair is stale once either side has merged since
  };
  std::vector<Symbol> symbols;
  std::vector<std::vector<Pair>> buckets;  // candidate pairs by rank of the merged piece (empty between calls)
  std::vector<uint64_t> occupied;          // bit per non-empty bucket
};

class SpBpeModel {
 public:
  int offset = 0;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  std::unordered_map<int, int> added_override;  // local id -> added-token id
  std::unordered_map<int, int> base_remap;      // base id -> global domain id

  void init(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int> types);
  void normalize(std::string_view in, std::string& out) const;
  // SentencePieceProcessor::Encode(text) equivalent: pieces with local ids, consecutive unknowns merged. `norm`
  // receives the normalized text the pieces point into.
  void encode(std::string_view text, std::string& norm, std::vector<SpPiece>& out, SpScratch& scratch) const;

 private:
  std::vector<std::string> pieces_;
  int lookup(std::string_view s) const;
  std::unordered_map<std::string_view, int> piece_ids_;  // NORMAL / USER_DEFINED / UNUSED
  std::vector<std::string_view> user_defined_;            // longest first
  // Merges without string hashing: open-addressing table (left piece id, right piece id) -> concatenated piece.
  struct MergeSlot {
    uint64_t key;  // left << 32 | right; kNoMerge when empty
    int id;
    uint32_t rank;
  };
  std::vector<uint32_t> rank_of_;  // piece id -> place of its score among the distinct scores, best first
  uint32_t ranks_ = 0;
  static constexpr uint64_t kNoMerge = ~uint64_t{0};
  std::vector<MergeSlot> merges_;
  int merge_shift_ = 64;
  const MergeSlot* merge_of(int left, int right) const;
  int byte_ids_[128];  // single ASCII character -> piece id (-1: none)
};

// Byte-level BPE (tiktoken's CoreBPE.encode_ordinary with the Qwen2 pre-tokenizer) for ASCII text.
class ByteLevelBpe {
 public:
  void init(const std::vector<std::string>& tokens, const std::vector<int>& ids);
  // Appends the ids of `text` and returns true when it is all ASCII; else appends nothing and returns false.
  bool encode_ascii(std::string_view text, std::vector<int32_t>& out) const;

 private:
  static size_t pretoken_end(std::string_view s, size_t i);
  static constexpr int kNoRank = INT32_MAX;
  int rank(std::string_view bytes) const;
  bool encode_piece(std::string_view piece, std::vector<int32_t>& out,
                    std::vector<std::pair<size_t, int>>& parts) const;
  std::vector<std::string> tokens_;
  std::unordered_map<std::string_view, int> ranks_;  // token bytes -> id (= merge rank)
};

struct TokenEntry {
  std::string text;
  int kind;
  int id;
  int domain;
};

struct Plan {
  std::vector<std::vector<int32_t>> ops;                 // id >= 0, or -(k+1): k-th span of this text
  std::vector<std::vector<std::string>> spans;           // base-BPE text per text
  std::vector<std::vector<int>> span_domain;             // remap domain per span (-1 none)
  // SMILES candidates without a cached (RDKit) verdict, per text: planned as not SMILES; replan() those texts
  // once set_verdicts() has the answers. Always empty with the rules validator.
  std::vector<std::vector<std::string>> pending;
};

class Encoder {
 public:
  Encoder(std::vector<TokenEntry> tokens, std::vector<std::unique_ptr<SpBpeModel>> domains,
          std::vector<std::pair<int, int>> detectors, const std::vector<uint32_t>& decimal_digits,
          bool rules_validator, bool strict_tags, bool rescan_detected, bool protein_skips_nucleotides);

  void set_verdicts(const std::vector<std::string>& candidates, const std::vector<bool>& verdicts);
  // The base vocabulary (tiktoken's mergeable ranks): ASCII base-BPE text is then encoded here, not returned as
  // a span for tiktoken.
  void set_base_vocabulary(const std::vector<std::string>& tokens, const std::vector<int>& ids);
  std::unique_ptr<Plan> plan(const std::vector<std::string>& texts, int threads) const;
  // Plans texts[j] again as document which[j] of `plan` (after set_verdicts answered its pending candidates).
  void replan(Plan& plan, const std::vector<size_t>& which, const std::vector<std::string>& texts, int threads) const;
  // ids[starts[k] .. starts[k + 1]): base-BPE ids of the k-th span of the plan (all documents, in order).
  std::vector<std::vector<int32_t>> assemble(const Plan& plan, const std::vector<int32_t>& ids,
                                             const std::vector<size_t>& starts) const;

  // Testing hooks.
  std::vector<std::pair<std::string, int>> encode_domain(int domain, const std::string& text) const;
  bool rules_ok(const std::string& candidate) const;
  std::optional<std::vector<int32_t>> encode_base_ascii(const std::string& text) const;
  std::vector<std::pair<size_t, size_t>> smiles_matches(const std::string& text) const;

  const SpBpeModel& domain(int i) const { return *domains_[i]; }
  int num_domains() const { return static_cast<int>(domains_.size()); }

 private:
  struct Item {
    int type;  // 0 text, 1 begin marker, 2 end marker, 3 token (index into tokens_)
    int value; // domain or token index
    std::string_view text;
  };
  struct Ctx {
    std::vector<std::string>* pending = nullptr;  // collects candidates without a verdict
  };

  size_t smiles_unit(std::string_view s, size_t p) const;
  bool is_decimal(uint32_t cp) const;
  bool smiles_valid(std::string_view cand, Ctx& ctx) const;
  void detect(std::string_view text, size_t k, std::vector<Item>& out, Ctx& ctx) const;
  void split_one(std::string_view text, size_t k, std::vector<Item>& out, Ctx& ctx) const;
  std::vector<Item> items(std::string_view text, Ctx& ctx) const;
  void check_balanced(std::string_view text) const;
  void encode_one(std::string_view text, Plan& plan, size_t index, SpScratch& scratch) const;

  std::vector<TokenEntry> tokens_;
  bool token_first_byte_[256] = {};
  std::vector<std::vector<int>> tokens_by_byte_;  // first byte -> token indices, longest first
  std::vector<std::unique_ptr<SpBpeModel>> domains_;
  std::unique_ptr<ByteLevelBpe> base_;  // null: every base-BPE stretch is a span
  std::vector<std::pair<int, int>> detectors_;  // (kind, domain)
  std::vector<std::pair<uint32_t, uint32_t>> decimal_ranges_;
  bool rules_validator_;
  bool strict_tags_;
  bool rescan_detected_;
  bool protein_skips_nucleotides_;
  mutable std::mutex verdict_mutex_;
  std::unordered_map<std::string, bool> verdicts_;
};

bool smiles_rules_ok(const std::u32string& t, const std::vector<std::pair<uint32_t, uint32_t>>& decimal_ranges);

}  // namespace s1tok
