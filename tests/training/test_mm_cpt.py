"""Multimodal CPT end to end on CPU from one initial checkpoint: DP=2 (the square-averaging normaliser is
global across ranks) gives the same losses and grad norms as PP=2 with DP=1 (encoders on the first stage).

A per-rank normaliser would make DP=2 differ from DP=1 (see test_losses for the values); a broken stage
split or embedding merge would make PP=2 differ.

Sequence packing (data.packing): a packed sample gets the per-token losses it gets alone, a packed global batch
the same square-averaged (and token-averaged) objective as one sample per row, and a VLBS-packed run learns and
resumes exactly."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from tests.conftest import REPO, losses, read_metrics, run_cli

RECIPE = os.path.join(REPO, "examples", "mm_cpt", "tiny_cpu.yaml")


@pytest.fixture(scope="module")
def mm_data(tmp_path_factory) -> str:
    sys.path.insert(0, os.path.join(REPO, "examples", "mm_cpt"))
    try:
        import make_data
    finally:
        sys.path.pop(0)
    return make_data.main(str(tmp_path_factory.mktemp("mm")), n=24)


def _args(run_dir, data, *extra):
    return ["train", "--config", RECIPE, f"run.dir={run_dir}", f"data.blend=[{data}]", "logging.tensorboard=false",
            "train.steps=2", "train.eval_interval=0", "train.eval_iters=0", "checkpoint.interval=0",
            "data.split=100,0,0", *extra]


def test_dp2_matches_pp2_from_one_init(tmp_path, mm_data):
    init, dp2, pp2 = (str(tmp_path / n) for n in ("init", "dp2", "pp2"))
    run_cli(_args(init, mm_data, "train.steps=0"))
    pretrained = f"checkpoint.pretrained={os.path.join(init, 'checkpoints')}"
    run_cli(_args(dp2, mm_data, pretrained), nproc=2)
    run_cli(_args(pp2, mm_data, pretrained, "parallel.pipeline=2"), nproc=2)
    ref, got = losses(dp2), losses(pp2)
    assert len(ref) == 2 and all(v == v for v in ref.values())
    assert ref[1] == pytest.approx(7.65, abs=0.1)  # ~ln(vocab) at init
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step
    for a, b in zip(read_metrics(pp2), read_metrics(dp2)):
        if "grad_norm" in a:
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)


# ----------------------------------------------------------------------------------- sequence packing
# data.packing for mm_pretrain: packs of whole samples (images and series included) must give every sample the
# per-token losses it gets alone, and square averaging must weigh each token by its own sample's l_i.

SEQ = 256


@pytest.fixture(scope="module")
def mm_model(mm_data):
    """(cfg, dataset, packing samples, model) of the tiny recipe: real tokenizer, local spec, fp32."""
    from megatron_s1.config import load_config
    from megatron_s1.data.multimodal import MultimodalJsonlDataset, resolve_media_tokens
    from megatron_s1.data.multimodal.dataset import MultimodalSamples
    from megatron_s1.models.interns1 import build_interns1_model
    from megatron_s1.models.language import build_transformer_config
    from megatron_s1.tokenizer import load_tokenizer
    from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything

    cfg = load_config(RECIPE, [f"data.blend=[{mm_data}]", "model.spec=local"])
    init_distributed()
    initialize_model_parallel(cfg)
    tok = load_tokenizer()
    media = resolve_media_tokens(tok)
    dataset = MultimodalJsonlDataset([mm_data], tok, media, SEQ, vision=cfg.vision, timeseries=cfg.timeseries)
    seed_everything(0)
    model = build_interns1_model(cfg, build_transformer_config(cfg), True, True, token_ids=media).eval()
    with torch.no_grad():
        # At init every token's CE is ~ln(vocab), which would hide a wrong weighting or normaliser; larger
        # output weights spread the per-token CE.
        model.language_model.output_layer.weight.mul_(30)
    return cfg, dataset, MultimodalSamples(dataset), model


def _forward(model, batch):
    """Per-token losses [b, s] through the tasks' forward (mask or THD params, media)."""
    from megatron_s1.training.tasks import run_model

    with torch.no_grad():
        return run_model(model, batch, torch.device("cpu"))[1]


def test_packed_per_sample_losses_equal_unpacked(mm_model):
    from megatron_s1.data.multimodal import collate
    from megatron_s1.data.packed import MaskedPackedData, SamplePacks

    _, dataset, samples, model = mm_model
    packs = SamplePacks(samples, SEQ, seed=0, vlbs=True)
    data = MaskedPackedData(packs, None, SEQ, True, samples.load_media)
    # The fullest pack: several samples, and (checked) both images and series, so media order matters.
    p = max(range(len(packs)), key=lambda q: len(packs.members(q)))
    batch = data.collate(p)
    members = [int(i) for i in packs.members(p)]
    assert len(members) >= 3 and batch["pixel_values"] is not None and len(batch["ts_values"]) >= 2
    packed = _forward(model, batch)[0]
    cu = batch["cu_seqlens"].tolist()
    for k, i in enumerate(members):
        alone = _forward(model, collate([dataset[samples.keep[i]]], True))[0]
        n = cu[k + 1] - cu[k]
        assert n == samples.sample_lengths[i]
        torch.testing.assert_close(packed[cu[k]:cu[k + 1]], alone[:n], atol=1e-5, rtol=1e-5)
        # The loss mask of the sample's tokens is the unpacked one (text and EOD labels only).
        torch.testing.assert_close(batch["loss_mask"][0, cu[k]:cu[k + 1]], dataset[samples.keep[i]]["loss_mask"][:n])


@pytest.mark.parametrize("mode", ["square", "token"])
def test_packed_global_batch_loss_equals_unpacked(mm_model, mode):
    """The objective Megatron optimises (sum of numerators / sum of integer token counts over all micro-batches
    and DP ranks) is the same for a global batch packed (DP=1 and DP=2) and one sample per row."""
    from megatron_s1.data.packed import MaskedPackedData, SamplePacks
    from megatron_s1.models.interns1.task import packed_microbatches, row_microbatches
    from megatron_s1.training.losses import global_normaliser, weighted_token_loss

    _, dataset, samples, model = mm_model
    packs = SamplePacks(samples, SEQ, seed=3, vlbs=False)
    data = MaskedPackedData(packs, None, SEQ, True, samples.load_media)
    global_packs = 4
    members = [int(i) for p in range(global_packs) for i in packs.members(p)]
    assert len(members) > global_packs  # several samples per pack

    def objective(batches):
        chunks = [weighted_token_loss(b["loss_mask"], b["sample_weight"], b["global_weight_sum"], b["global_tokens"],
                                      _forward(model, b)) for b in batches]
        assert all(c[1].dtype == torch.int32 for c in chunks)
        return float(sum(c[0] for c in chunks) / sum(int(c[1]) for c in chunks))

    rows = dataset.subset([samples.keep[i] for i in members])
    unpacked = objective(row_microbatches(rows, 0, len(members), 0, 1, mode, 1, True))
    dp1 = objective(packed_microbatches(data, 0, global_packs, 0, 1, mode))
    dp2 = [list(packed_microbatches(data, 0, global_packs, r, 2, mode)) for r in range(2)]
    # fp32 sums in another order agree to ~1e-7 here; the wrong variants below are off by 6e-5 to 1e-4.
    tol = 3e-6
    assert dp1 == pytest.approx(unpacked, rel=tol)
    assert objective(dp2[0] + dp2[1]) == pytest.approx(unpacked, rel=tol)
    if mode == "square":
        # One weight per pack (its tokens' mean weight, which keeps D right) or a per-rank normaliser: other values.
        per_pack = [dict(b, sample_weight=b["sample_weight"][b["loss_mask"] > 0].mean().reshape(1)) for b in dp2[0]]
        assert objective(per_pack + dp2[1]) != pytest.approx(unpacked, rel=tol)
        local = []
        for r in range(2):
            lengths = [samples.loss_tokens(int(i)) for p in data.pack_ids(0, global_packs, r, 2)
                       for i in packs.members(p)]
            weight_sum, tokens = global_normaliser(lengths, mode)
            local += [dict(b, global_weight_sum=weight_sum, global_tokens=tokens) for b in dp2[r]]
        assert objective(local) != pytest.approx(unpacked, rel=tol)


def _packed_args(run_dir, data, *extra):
    return ["train", "--config", RECIPE, f"run.dir={run_dir}", f"data.blend=[{data}]", "logging.tensorboard=false",
            "data.packing=vlbs", "data.micro_batch_size=1", f"data.seq_length={SEQ}", "data.packing_epochs=3",
            "train.global_batch_tokens=[[0,512]]", "train.steps=6", "train.eval_interval=0", "train.eval_iters=1",
            "checkpoint.interval=0", *extra]


def test_packed_training_learns_and_resumes_exactly(tmp_path, mm_data):
    import json

    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    done = run_cli(_packed_args(full, mm_data))
    run_cli(_packed_args(cut, mm_data, "train.exit_at_step=3"))
    resumed = run_cli(_packed_args(cut, mm_data))
    ref, got = losses(full), losses(cut)
    assert sorted(ref) == list(range(1, 7)) and ref[6] < ref[1] - 0.3  # it learns
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step
    valid = [json.loads(p.stdout.strip().splitlines()[-1])["result"]["valid_loss"] for p in (done, resumed)]
    assert valid[0] == pytest.approx(valid[1], abs=1e-6)


def test_packing_needs_micro_batch_size_one(tmp_path, mm_data):
    proc = run_cli(_packed_args(str(tmp_path), mm_data, "data.micro_batch_size=2"), check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err[-1] == ("error: data.packing=vlbs needs data.micro_batch_size=1 (a micro-batch is one packed "
                       "sequence), got 2"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
