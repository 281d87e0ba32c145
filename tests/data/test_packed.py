"""Packed documents: same per-sample losses as unpacked, exact resume, DP balancing in a real run."""
import numpy as np
import pytest
import torch

from megatron_s1.config import load_config
from megatron_s1.data.packed import collate_pack, split_documents
from megatron_s1.models.language import build_language_model, build_transformer_config
from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything
from megatron_s1.training.tasks import masked_token_loss
from tests.conftest import losses, run_cli


def test_collate_pack_layout():
    docs = [np.array([5, 6, 7]), np.array([8, 9])]
    b = collate_pack(docs, seq_length=6, with_mask=True)
    assert b["tokens"].tolist() == [[5, 6, 8, 0, 0, 0]]
    assert b["labels"].tolist() == [[6, 7, 9, 0, 0, 0]]
    assert b["loss_mask"].tolist() == [[1, 1, 1, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 0, 0, 1, 2]]
    assert b["cu_seqlens"].tolist() == [0, 2, 3, 6]
    mask = b["attention_mask"][0, 0]
    assert not mask[1, 0] and mask[2, 1] and not mask[2, 2] and mask[0, 1]  # block-diagonal causal


def test_split_documents_is_a_partition():
    parts = split_documents(100, "80,10,10", seed=3)
    assert [len(p) for p in parts] == [80, 10, 10]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))


@pytest.mark.parametrize("preset", ["tiny-dense", "tiny-moe"])
def test_packed_and_unpacked_per_sample_losses_match(preset):
    init_distributed()
    cfg = load_config(None, [f"model.preset={preset}", "model.params_dtype=fp32",
                             "model.moe_router_load_balancing_type=none"])
    initialize_model_parallel(cfg)
    seed_everything(0)
    model = build_language_model(cfg, build_transformer_config(cfg), True, True).eval()
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 2000, size=n) for n in (9, 17, 5)]
    packed = collate_pack(docs, seq_length=40, with_mask=True)
    with torch.no_grad():
        packed_losses = model(packed["tokens"], packed["position_ids"], packed["attention_mask"],
                              labels=packed["labels"])[0]
        cu = packed["cu_seqlens"].tolist()
        for i, doc in enumerate(docs):
            alone = collate_pack([doc], seq_length=len(doc) - 1, with_mask=True)
            alone_losses = model(alone["tokens"], alone["position_ids"], alone["attention_mask"],
                                 labels=alone["labels"])[0]
            torch.testing.assert_close(packed_losses[cu[i]:cu[i + 1]], alone_losses, atol=1e-5, rtol=1e-5)
    # Normalisation: the packed micro-batch loss is the mean over real tokens only (padding excluded).
    loss_sum, count, _ = masked_token_loss(packed["loss_mask"], packed_losses[None])
    assert int(count) == sum(len(d) - 1 for d in docs)
    torch.testing.assert_close(loss_sum, packed_losses[: cu[3]].sum())


def test_packed_resume_is_exact(tmp_path, train_args):
    common = ["train.steps=4", "data.packing=vlbs", "data.micro_batch_size=1"]
    run_cli(train_args(str(tmp_path / "full"), *common))
    run_cli(train_args(str(tmp_path / "resumed"), *common, "train.exit_at_step=2"))
    run_cli(train_args(str(tmp_path / "resumed"), *common))
    assert losses(str(tmp_path / "resumed")) == losses(str(tmp_path / "full"))


def test_vlbs_data_parallel_run(tmp_path, train_args):
    run_cli(train_args(str(tmp_path), "train.steps=3", "data.packing=vlbs", "data.micro_batch_size=1"), nproc=2)
    got = losses(str(tmp_path))
    assert sorted(got) == [1, 2, 3] and all(np.isfinite(list(got.values())))
