"""Packing invariance: a packed conversation keeps its tokens, labels, loss mask and positions; naive and
VLBS packing train on the same assistant tokens; a packed forward equals the conversations run alone."""
from __future__ import annotations

import numpy as np
import torch

from megatron_s1.data.chat.dataset import ChatSamples
from megatron_s1.data.chat.format import ChatTokenizer, Tokenized
from megatron_s1.data.packed import SamplePacks, collate_masked_pack
from megatron_s1.tokenizer import load_tokenizer


def _samples(n=40, seed=0):
    tok = load_tokenizer()
    chat = ChatTokenizer(tok, "qwen3")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        turns = []
        for t in range(1 + i % 3):
            turns += [{"role": "user", "content": f"question {i}.{t} " + "x" * int(rng.integers(0, 40))},
                      {"role": "assistant", "content": f"answer {i}.{t} " + "y" * int(rng.integers(0, 60))}]
        out.append(chat(turns))
    return out


def _segments(batch):
    cu = batch["cu_seqlens"].tolist()
    return [(batch["tokens"][0, a:b], batch["labels"][0, a:b], batch["loss_mask"][0, a:b], batch["position_ids"][0, a:b])
            for a, b in zip(cu[:-1], cu[1:])]


def test_packed_sample_equals_unpacked():
    samples = ChatSamples(_samples(), 128)
    for vlbs in (False, True):
        packs = SamplePacks(samples, 128, seed=1, vlbs=vlbs)
        seen = []
        for p in range(len(packs)):
            members = packs.sample_indices[packs.pack_offsets[p]:packs.pack_offsets[p + 1]]
            segs = _segments(collate_masked_pack(packs[p], 128, with_mask=False))
            for k, i in enumerate(members):
                ids, mask = samples[int(i)]
                tokens, labels, loss_mask, pos = segs[k]
                assert torch.equal(tokens, torch.from_numpy(ids[:-1])) and torch.equal(labels, torch.from_numpy(ids[1:]))
                assert torch.equal(loss_mask, torch.from_numpy(mask[1:]))
                assert torch.equal(pos, torch.arange(len(ids) - 1))
                seen.append(int(i))
            if len(segs) > len(members):  # padding segment carries no loss
                assert segs[-1][2].sum() == 0
        assert sorted(seen) == list(range(len(samples)))  # every conversation exactly once


def test_truncation_and_drop():
    long = Tokenized(list(range(300)), [0] * 200 + [1] * 100)
    short = Tokenized([1, 2, 3], [0, 1, 1])
    s = ChatSamples([long, short], 128)
    assert len(s) == 1 and s.dropped == 1  # the long one has no assistant token within 128 tokens


def test_block_diagonal_attention_equals_separate():
    """Packing invariance of the loss: a causal block-diagonal attention over a pack gives each conversation
    exactly the outputs it gets alone (single attention layer with the collated mask and positions)."""
    samples = ChatSamples(_samples(8, seed=2), 128)
    torch.manual_seed(0)
    emb = torch.nn.Embedding(4096, 16)
    attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    pos_emb = torch.nn.Embedding(256, 16)

    def run(tokens, pos, mask):
        x = emb(tokens) + pos_emb(pos)
        return attn(x, x, x, attn_mask=mask)[0]

    packs = SamplePacks(samples, 128, seed=0, vlbs=True)
    for p in range(len(packs)):
        b = collate_masked_pack(packs[p], 128, with_mask=True)
        out = run(b["tokens"], b["position_ids"], b["attention_mask"][0, 0])
        cu = b["cu_seqlens"].tolist()
        for (ids, _), a, e in zip(packs[p], cu[:-1], cu[1:]):
            n = len(ids) - 1
            alone = run(torch.from_numpy(ids[:-1])[None], torch.arange(n)[None],
                        ~torch.tril(torch.ones(n, n, dtype=torch.bool)))
            torch.testing.assert_close(out[0, a:e], alone[0], atol=1e-5, rtol=1e-5)
