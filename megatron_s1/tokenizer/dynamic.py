"""The Intern-S1 dynamic scientific tokenizer.

Text is NFC-normalised, cut at added tokens (``<|im_start|>``, ``<SMILES>``...), and every untagged stretch is
scanned by the auto-detectors (:mod:`megatron_s1.tokenizer.detection`). Each resulting span is encoded by the
model of its domain, whose ids live in a disjoint range ``[offset, offset + size)``, so the same character gets
a different embedding in prose, SMILES and protein text. A domain piece the domain model does not know (id 0,
consecutive unknown characters merged) falls back to the base byte-level BPE. Explicit tags keep their ids;
auto-detected spans get no marker ids.

Two implementations produce identical ids:

* ``backend="python"`` — the reference: ``regex`` detection, the ``sentencepiece`` library, tiktoken for the base.
* ``backend="native"`` — ``megatron_s1._tokenizer`` (C++): detection scan, SentencePiece BPE and the base BPE of
  ASCII text in C++, run over a batch with the GIL released; other base-BPE text goes through tiktoken.

Both load the released directories as they are and give the ids of the released ``InternS1Tokenizer`` code
(``tests/tokenizer/test_release_parity.py`` compares them). Deliberate differences (only on pathological input):
text that spells an auto-detect marker (``<SMILES_AUTO_DETECT>``) stays plain text (the released code silently
swallows it), and unbalanced tags raise by default (``on_unbalanced="ignore"`` restores the released code's lenient
behaviour). Text with a lone surrogate raises ``UnicodeEncodeError`` in both backends, as the released code does.
"""
from __future__ import annotations

import functools
import os
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import regex

from megatron_s1.tokenizer.bpe import ByteLevelBPETokenizer, read_added_tokens, read_vocab
from megatron_s1.tokenizer.detection import DETECTOR_ORDER, make_detector, smiles_validator, split_detected
from megatron_s1.tokenizer.domain import SPACE_SYMBOL, DomainModel
from megatron_s1.tokenizer.layout import (MANIFEST, Layout, TokenizerLayoutError, check_id_ranges,
                                          check_single_ids, placeholder_token, read_layout)

# Kinds of added-token matches.
SPECIAL, TAG_BEGIN, TAG_END, PROTECT_BEGIN, PROTECT_END = range(5)


class UnbalancedTagError(ValueError):
    """An explicit domain tag or <MOLFORMULA> is not closed, or closed without/with the wrong opener."""


@functools.lru_cache(maxsize=1)
def unicode_decimal_digits() -> list[int]:
    """Code points that the ``regex`` module's ``\\d`` matches (Unicode Nd), for the C++ scanner."""
    chars = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    return [ord(m.group()) for m in regex.finditer(r"\d", chars)]


def _nfc(text: str) -> str:
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def reject_lone_surrogates(text: str) -> None:
    """Raise UnicodeEncodeError (as the released tokenizer does) for text that is not valid Unicode."""
    found = _SURROGATE.search(text)
    if found:
        raise UnicodeEncodeError("utf-8", text, found.start(), found.end(),
                                 "lone surrogate, the text is not valid Unicode; decode the source with "
                                 "errors='replace' (or repair it) before tokenizing")


class DynamicTokenizer:
    """Intern-S1(-Pro) dynamic tokenizer over a tokenizer directory.

    Args:
        directory: Intern-S1-format directory (see :mod:`megatron_s1.tokenizer.layout`).
        backend: "native" (C++ fast path), "python" (reference), or "auto" (native when built and the domain
            models are supported, else python).
        smiles_validator: "auto" (RDKit if installed, else rules), "rdkit" or "rules".
        on_unbalanced: "error" (raise UnbalancedTagError) or "ignore" (tokenize like the reference).
        num_threads: threads for encode_batch (default: CPU count, at most 16).
    """

    def __init__(self, directory: str, backend: str = "auto", smiles_validator: str = "auto",
                 on_unbalanced: str = "error", num_threads: int | None = None):
        if backend not in ("auto", "native", "python"):
            raise ValueError(f"backend={backend!r}: use 'auto', 'native' or 'python'")
        if on_unbalanced not in ("error", "ignore"):
            raise ValueError(f"on_unbalanced={on_unbalanced!r}: use 'error' or 'ignore'")
        self.directory = directory
        self.layout: Layout = read_layout(directory)
        self.on_unbalanced = on_unbalanced
        self.num_threads = num_threads or min(16, os.cpu_count() or 1)
        self.smiles_validator_mode = smiles_validator
        self._validate_smiles = globals()["smiles_validator"](smiles_validator)
        self.validator_kind = "rules" if self._validate_smiles.__name__ == "smiles_rules_ok" else "rdkit"
        self.domains: list[DomainModel] = [
            DomainModel(d.name, os.path.join(directory, d.model_file), d.offset) for d in self.layout.domains]
        for dm in self.domains:
            if dm.unk_id != 0:
                raise TokenizerLayoutError(f"{dm.path}: unk_id is {dm.unk_id}; the dynamic tokenizer needs the "
                                           "unknown piece at id 0 (retrain with unk_id=0)")
        added = read_added_tokens(directory)
        self._check_domain_ranges(added)
        self._vocab = self._without_placeholders(read_vocab(directory), added)
        self.base = ByteLevelBPETokenizer(directory, vocab=self._vocab)
        self.added_tokens: dict[str, int] = dict(self.base.added_tokens)
        self._check_base_range()
        self._build_token_table()
        self._build_domain_tables()
        self.detectors = [make_detector(kind, spec_idx, bool(self.layout.protein_skips_nucleotides))
                          for kind in DETECTOR_ORDER
                          for spec_idx, spec in enumerate(self.layout.domains) if spec.detect == kind]
        self.eod_id = self.base.eod_id
        top = max([self.base.vocab_size - 1] + [dm.offset + dm.size - 1 for dm in self.domains])
        self.vocab_size = top + 1
        self._native = None
        self.backend = "python"
        if backend in ("auto", "native"):
            reason = self._native_unavailable_reason()
            if reason is None:
                self._native = self._make_native()
                self.backend = "native"
            elif backend == "native":
                raise RuntimeError(f"backend='native' unavailable: {reason}; use backend='python'")

    @classmethod
    def from_pretrained(cls, directory: str, **kwargs) -> "DynamicTokenizer":
        return cls(directory, **kwargs)

    # ----------------------------------------------------------------------------------------------- setup
    def _domain_ranges(self) -> list[tuple[str, int, int]]:
        return [(f"domain {dm.name}", dm.offset, dm.offset + dm.size) for dm in self.domains]

    def _check_domain_ranges(self, added: dict[str, int]) -> None:
        """Domains apart from each other and from every added token (checked before vocab.json is read, so a
        misplaced offset is reported as such rather than as the vocab.json entries it lands on)."""
        for dm in self.domains:
            if dm.offset < 0:
                raise TokenizerLayoutError(f"domain {dm.name}: negative offset {dm.offset}; fix it in the manifest")
        check_id_ranges(self._domain_ranges())
        check_single_ids(self._domain_ranges(), added)

    def _without_placeholders(self, vocab: dict[str, int], added: dict[str, int]) -> dict[str, int]:
        """vocab.json less the releases' ``<|NAME_piece|>`` entries at domain ids; any other entry there collides
        (the lowest such id is reported)."""
        ranges = [(dm, dm.offset, dm.offset + dm.size) for dm in self.domains]
        plain, collisions = {}, []
        for token, token_id in vocab.items():
            domain = next((r for r in ranges if r[1] <= token_id < r[2]), None)
            if domain is None or token in added:
                plain[token] = token_id
                continue
            dm, start, end = domain
            if token != placeholder_token(dm.name, dm.sp.id_to_piece(token_id - start)):
                collisions.append((token_id, token, domain))
        if collisions:
            token_id, token, (dm, start, end) = min(collisions, key=lambda c: c[0])
            expected = placeholder_token(dm.name, dm.sp.id_to_piece(token_id - start))
            raise TokenizerLayoutError(
                f"offset collision: base vocabulary entry {token!r} (vocab.json id {token_id}) lies inside domain "
                f"{dm.name} ids [{start}, {end}) and is not that id's placeholder {expected!r}; move the domain "
                f"offset (tokenizer_config.json offset_{dm.name} or {MANIFEST}) or remove the entry")
        return plain

    def _check_base_range(self) -> None:
        plain = [v for k, v in self._vocab.items() if k not in self.added_tokens]
        self._base_end = max(plain) + 1 if plain else 0
        check_id_ranges([("base vocabulary", 0, self._base_end)] + self._domain_ranges())

    def _build_token_table(self) -> None:
        """Which literal strings cut the text: added tokens, active tags, protect tags."""
        table: dict[str, tuple[int, int, int]] = {}  # text -> (kind, id or -1, domain index or -1)
        for token, token_id in self.added_tokens.items():
            table[token] = (SPECIAL, token_id, -1)
        self.tag_domains: dict[str, int] = {}
        for idx, spec in enumerate(self.layout.domains):
            for tag in spec.tags:
                for text, kind in ((f"<{tag}>", TAG_BEGIN), (f"</{tag}>", TAG_END)):
                    if text in self.added_tokens:  # a tag is active only as an added token
                        table[text] = (kind, self.added_tokens[text], idx)
                        self.tag_domains[text] = idx
        for tag in self.layout.protect_tags:
            table[f"<{tag}>"] = (PROTECT_BEGIN, -1, -1)
            table[f"</{tag}>"] = (PROTECT_END, -1, -1)
        self._token_table = table
        ordered = sorted(table, key=lambda t: (-len(t), t))
        self._token_regex = regex.compile("|".join(regex.escape(t) for t in ordered)) if ordered else None

    def _build_domain_tables(self) -> None:
        """Per domain: pieces that are added-token strings, and base tokens whose string is a domain piece.

        The reference converts token strings to ids with the domain model on top of the stack first, so a base
        BPE token produced inside a domain span (unknown-piece fallback, <MOLFORMULA>) whose byte-level string is
        also a domain piece takes the domain id.
        """
        self._added_override: list[dict[int, int]] = []
        self._base_remap: list[dict[int, int]] = []
        for dm in self.domains:
            override, remap = {}, {}
            for local_id in range(dm.size):
                if dm.sp.is_unknown(local_id):
                    continue
                piece = dm.sp.id_to_piece(local_id)
                if piece in self.added_tokens:
                    override[local_id] = self.added_tokens[piece]
                elif piece in self._vocab:
                    remap[self._vocab[piece]] = dm.offset + local_id
            self._added_override.append(override)
            self._base_remap.append(remap)
        # id -> bytes for decode of domain ids
        self._domain_bytes: dict[int, bytes] = {}
        for dm, override in zip(self.domains, self._added_override):
            for local_id in range(dm.size):
                if local_id not in override:
                    self._domain_bytes[dm.offset + local_id] = dm.piece_text(local_id).encode("utf-8")

    # ------------------------------------------------------------------------------------ python reference
    def _split_added(self, text: str) -> list[tuple[int, str, int]]:
        """[(kind or -1 for text, string, char offset)] cut at added/tag/protect tokens, leftmost-longest."""
        if self._token_regex is None:
            return [(-1, text, 0)] if text else []
        out, pos = [], 0
        for m in self._token_regex.finditer(text):
            if m.start() > pos:
                out.append((-1, text[pos:m.start()], pos))
            out.append((self._token_table[m.group()][0], m.group(), m.start()))
            pos = m.end()
        if pos < len(text):
            out.append((-1, text[pos:], pos))
        return out

    def _check_balanced(self, parts) -> None:
        stack: list[tuple[str, int]] = []
        for kind, token, where in parts:
            if kind in (TAG_BEGIN, PROTECT_BEGIN):
                stack.append((token, where))
            elif kind in (TAG_END, PROTECT_END):
                want = "</" + token[2:]
                opener = "<" + token[2:]
                if not stack:
                    raise UnbalancedTagError(f"unbalanced tag: {token!r} at char {where} closes nothing; add "
                                             f"{opener!r} before it or pass on_unbalanced='ignore'")
                top, top_at = stack.pop()
                if "</" + top[1:] != want:
                    raise UnbalancedTagError(f"unbalanced tag: {token!r} at char {where} closes {top!r} opened at "
                                             f"char {top_at}; close with {'</' + top[1:]!r} first or pass "
                                             "on_unbalanced='ignore'")
        if stack:
            token, where = stack[-1]
            raise UnbalancedTagError(f"unbalanced tag: {token!r} at char {where} is never closed; add "
                                     f"{'</' + token[1:]!r} or pass on_unbalanced='ignore'")

    def _base_ids(self, text: str, domain: int | None) -> list[int]:
        if SPACE_SYMBOL in text:  # the release turns '▁' into a space before every base BPE call
            text = text.replace(SPACE_SYMBOL, " ")
        ids = self.base._encoding.encode_ordinary(text)
        if domain is not None:
            remap = self._base_remap[domain]
            if remap:
                ids = [remap.get(i, i) for i in ids]
        return ids

    def _domain_ids(self, text: str, domain: int) -> list[int]:
        dm = self.domains[domain]
        override = self._added_override[domain]
        pieces, local_ids = dm.encode_pieces(text)
        out: list[int] = []
        for piece, local_id in zip(pieces, local_ids):
            if local_id == 0:
                out.extend(self._base_ids(piece, domain))
            else:
                out.append(override.get(local_id, dm.offset + local_id))
        return out

    def segment(self, text: str) -> list[tuple[str, str]]:
        """Debug view: [(domain name or 'base' or 'token', text)] as the reference routes them."""
        out = []
        for item in self._items(_nfc(text)):
            if item[0] == "text":
                out.append((self.domains[item[2]].name if item[2] is not None else "base", item[1]))
            elif item[0] in ("special", "tag", "protect"):
                out.append(("token", item[1]))
        return out

    def _items(self, text: str):
        """Yield ('text', str, domain or None) / ('special'|'tag'|'protect', str, id) in order (the stack pass)."""
        parts = self._split_added(text)
        if self.on_unbalanced == "error":
            self._check_balanced(parts)
        flat: list = []
        guard = 0  # explicit tags / protect tags currently open (no auto-detection inside)
        for kind, s, _ in parts:
            if kind == -1:
                if guard:
                    flat.append(("text", s))
                else:
                    flat.extend(split_detected(s, self.detectors, self._validate_smiles, self.layout.rescan_detected))
            else:
                flat.append(("token", s))
                if kind in (TAG_BEGIN, PROTECT_BEGIN):
                    guard += 1
                elif kind in (TAG_END, PROTECT_END):
                    guard = max(0, guard - 1)
        stack: list[int] = []
        for kind, value in flat:
            if kind == "text":
                yield ("text", value, stack[-1] if stack else None)
            elif kind == "begin":
                stack.append(value)
            elif kind == "end":
                if stack:
                    stack.pop()
            else:
                tkind, tid, tdom = self._token_table[value]
                if tkind in (PROTECT_BEGIN, PROTECT_END):
                    yield ("protect", value, stack[-1] if stack else None)
                elif tkind == TAG_BEGIN:
                    yield ("tag", value, tid)
                    stack.append(tdom)
                elif tkind == TAG_END:
                    yield ("tag", value, tid)
                    if stack:
                        stack.pop()
                else:
                    yield ("special", value, tid)

    def encode_python(self, text: str) -> list[int]:
        """Reference encoder (pure Python over sentencepiece + tiktoken)."""
        reject_lone_surrogates(text)
        ids: list[int] = []
        for kind, value, extra in self._items(_nfc(text)):
            if kind == "text":
                ids.extend(self._base_ids(value, None) if extra is None else self._domain_ids(value, extra))
            elif kind == "protect":
                ids.extend(self._base_ids(value, extra))
            else:
                ids.append(extra)
        return ids

    # ----------------------------------------------------------------------------------------- native path
    def _native_unavailable_reason(self) -> str | None:
        try:
            from megatron_s1 import _tokenizer  # noqa: F401
        except ImportError as err:
            return (f"C++ extension megatron_s1._tokenizer not built ({err}); run "
                    "`python setup.py build_ext --inplace`")
        for dm in self.domains:
            reason = dm.info.native_unsupported_reason()
            if reason:
                return f"domain model {dm.path}: {reason}"
        return None

    def _make_native(self):
        from megatron_s1 import _tokenizer

        tokens = [(t, k, i, d) for t, (k, i, d) in self._token_table.items()]
        domains = []
        for dm, override, remap in zip(self.domains, self._added_override, self._base_remap):
            info = dm.info
            domains.append(dict(offset=dm.offset, pieces=info.pieces, scores=info.scores, types=info.types,
                                add_dummy_prefix=info.add_dummy_prefix,
                                remove_extra_whitespaces=info.remove_extra_whitespaces,
                                escape_whitespaces=info.escape_whitespaces, added_override=override,
                                base_remap=remap))
        detectors = [(d.kind, d.domain) for d in self.detectors]
        encoder = _tokenizer.Encoder(tokens, domains, detectors, unicode_decimal_digits(),
                                     self.validator_kind == "rules", self.on_unbalanced == "error",
                                     bool(self.layout.rescan_detected), bool(self.layout.protein_skips_nucleotides))
        ranks = self.base._encoding._mergeable_ranks
        encoder.set_base_vocabulary(list(ranks), list(ranks.values()))
        return encoder

    def _encode_native(self, texts: list[str], num_threads: int) -> list[list[int]]:
        try:
            return self._encode_native_valid(texts, num_threads)
        except TypeError:  # pybind11 cannot convert a str with a lone surrogate to UTF-8
            for text in texts:
                if isinstance(text, str):
                    reject_lone_surrogates(text)
            raise

    def _encode_native_valid(self, texts: list[str], num_threads: int) -> list[list[int]]:
        texts = [_nfc(t) for t in texts]
        native = self._native
        try:
            plan = native.plan(texts, num_threads)
        except ValueError as err:
            if str(err).startswith("unbalanced tag"):
                raise UnbalancedTagError(str(err)) from None
            raise
        # RDKit verdicts are cached in the encoder; documents that met uncached candidates are planned again
        candidates, documents = plan.pending()
        while candidates:
            native.set_verdicts(candidates, [self._validate_smiles(c) for c in candidates])
            native.replan(plan, documents, [texts[i] for i in documents], num_threads)
            candidates, documents = plan.pending()
        spans = plan.spans()
        if spans:
            core = self.base._encoding._core_bpe
            if num_threads > 1 and len(spans) > 64:
                chunk = (len(spans) + num_threads - 1) // num_threads
                with ThreadPoolExecutor(num_threads) as pool:
                    parts = pool.map(lambda lo: [core.encode_ordinary(s) for s in spans[lo:lo + chunk]],
                                     range(0, len(spans), chunk))
                span_ids = [ids for part in parts for ids in part]
            else:
                span_ids = [core.encode_ordinary(s) for s in spans]
        else:
            span_ids = []
        return native.assemble(plan, span_ids)

    # --------------------------------------------------------------------------------------------- public
    def encode(self, text: str) -> list[int]:
        if self._native is not None:
            return self._encode_native([text], 1)[0]
        return self.encode_python(text)

    def encode_batch(self, texts: Iterable[str], num_threads: int | None = None) -> list[list[int]]:
        texts = list(texts)
        if self._native is not None:
            return self._encode_native(texts, num_threads or self.num_threads)
        return [self.encode_python(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        out = bytearray()
        base = self.base._encoding
        for token_id in ids:
            piece = self._domain_bytes.get(token_id)
            if piece is None:
                piece = base.decode_single_token_bytes(token_id)
            out += piece
        return out.decode("utf-8", errors="replace")

    def domain_ranges(self) -> dict[str, tuple[int, int]]:
        """Global id range [start, end) of each domain, plus 'base' (base vocabulary and added tokens below it)."""
        ranges = {"base": (0, self._base_end)}
        for dm in self.domains:
            ranges[dm.name] = dm.id_range
        return ranges

    def __repr__(self) -> str:
        doms = ", ".join(f"{d.name}@{d.offset}+{d.size}" for d in self.domains)
        return f"DynamicTokenizer({self.directory!r}, {self.layout.generation}, [{doms}], backend={self.backend})"
