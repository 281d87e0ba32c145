"""Per-modality embedding rows start in mutually orthogonal subspaces."""
import pytest
import torch

from megatron_s1.models.embedding_init import modality_ranges, orthogonal_modality_init_


def test_modalities_are_mutually_orthogonal_and_norm_preserving():
    g = torch.Generator().manual_seed(0)
    w = torch.full((1000, 64), 7.0)
    ranges = [(0, 600), (600, 856), (900, 1000)]
    orthogonal_modality_init_(w, ranges, std=0.02, generator=g)
    assert torch.all(w[856:900] == 7.0)  # rows outside every range untouched
    blocks = [w[a:b] for a, b in ranges]
    for i in range(3):
        for j in range(i + 1, 3):
            cross = blocks[i] @ blocks[j].T
            assert cross.abs().max() < 1e-6 * blocks[i].norm(dim=1).max() * blocks[j].norm(dim=1).max() * 100
        # each block spans at most its share of the hidden size (64 // 3 + remainder)
        assert torch.linalg.matrix_rank(blocks[i].double(), rtol=1e-5) <= 22
    # expected squared row norm d * std^2 = 64 * 4e-4 = 0.0256
    mean_sq = torch.cat(blocks).pow(2).sum(dim=1).mean().item()
    assert 0.022 < mean_sq < 0.029


def test_plain_init_is_not_orthogonal_but_ours_is():
    w = torch.randn(200, 16) * 0.02
    assert (w[:100] @ w[100:].T).abs().max() > 1e-4
    orthogonal_modality_init_(w, [(0, 100), (100, 200)])
    assert (w[:100] @ w[100:].T).abs().max() < 1e-9


def test_bad_ranges():
    w = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="overlap"):
        orthogonal_modality_init_(w, [(0, 6), (5, 10)])
    with pytest.raises(ValueError, match="outside"):
        orthogonal_modality_init_(w, [(0, 11)])
    with pytest.raises(ValueError, match="hidden dims"):
        orthogonal_modality_init_(w, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)])


def test_ranges_from_dynamic_tokenizer(tmp_path_factory):
    from megatron_s1.tokenizer import DynamicTokenizer
    from megatron_s1.tokenizer.testing import build_test_directories
    tok = DynamicTokenizer(build_test_directories(str(tmp_path_factory.getbasetemp() / "tokdirs"))["custom"])
    ranges = modality_ranges(tok)
    assert len(ranges) == 4 and max(b for _, b in ranges) <= tok.vocab_size
    w = torch.zeros(tok.vocab_size, 32)
    orthogonal_modality_init_(w, ranges)
    smiles, prot = ranges[1], ranges[2]
    assert (w[smiles[0]:smiles[1]] @ w[prot[0]:prot[1]].T).abs().max() < 1e-6
