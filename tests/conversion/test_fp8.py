"""The Intern-S1-Pro release's block-FP8 checkpoint format (conversion/fp8.py) on a tiny random Pro checkpoint
written by tests/conversion/fp8_release.py: exact dequantization on hf-to-mcore, bit-identical
hf-to-mcore -> mcore-to-hf --quantize fp8-block round trip, unquantized export, the scale rule, the
modules_to_not_convert matching and the bad-input errors."""
import json
import os
import shutil

import pytest
import torch

from megatron_s1.conversion import fp8, hf_to_mcore
from tests.conversion.checks import assert_same_hf_checkpoint, hf_tensors
from tests.conversion.fp8_release import make_fp8_pro_model, reference_dequantize
from tests.conversion.test_conversion import _cli_error, _no_leftovers


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    hf_dir = make_fp8_pro_model(str(root / "hf"))
    ckpt = str(root / "mcore")
    summary = hf_to_mcore(hf_dir, ckpt)
    return {"hf": hf_dir, "ckpt": ckpt, "summary": summary, "root": root}


def _cli(args, capsys):
    """The CLI in this process (no interpreter start per call); its JSON summary."""
    from megatron_s1.cli import main

    assert main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _quantized(tensors):
    return {n: t for n, t in tensors.items() if t.dtype == torch.float8_e4m3fn}


def test_release_like_checkpoint_exercises_the_edge_cases(release):
    """The fixture has what makes the format hard: partial edge blocks, a zero block, and blocks whose
    largest e4m3 value is 224 (a fresh amax scale would be half the stored one)."""
    tensors = hf_tensors(release["hf"])
    weights = _quantized(tensors)
    assert len(weights) == 2 * (4 + 4 * 3)  # 2 layers x (q, k, v, o + 4 experts x gate, up, down)
    assert all(n.endswith("_proj.weight") for n in weights)
    assert any(w.shape[0] % 128 and w.shape[1] % 128 for w in weights.values())
    half_range = 0
    for name, w in weights.items():
        scale = tensors[name + "_scale_inv"]
        assert scale.dtype == torch.float32 and torch.equal(torch.exp2(torch.log2(scale).round()), scale)
        for i in range(scale.shape[0]):
            for j in range(scale.shape[1]):
                block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].float().abs().max().item()
                half_range += 0 < block <= 224
    assert half_range >= 3, half_range
    assert release["summary"]["dequantized"] == {"tensors": len(weights), "to": "bfloat16", "block": [128, 128]}


def test_dequantization_is_exact(release, tmp_path, capsys):
    """hf-to-mcore then an unquantized export gives, bit for bit, the reference dequantization of every FP8
    weight and the stored bf16 of every other tensor; config.json loses its quantization_config only."""
    back = str(tmp_path / "bf16")
    summary = _cli(["convert", "mcore-to-hf", "--ckpt", release["ckpt"], "--out", back], capsys)
    assert "quantized" not in summary
    original, exported = hf_tensors(release["hf"]), hf_tensors(back)
    assert sorted(exported) == sorted(n for n in original if not n.endswith("_scale_inv"))
    for name, tensor in exported.items():
        if original[name].dtype == torch.float8_e4m3fn:
            want = reference_dequantize(original[name], original[name + "_scale_inv"])
        else:
            want = original[name]
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, want), name
    with open(os.path.join(release["hf"], "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(back, "config.json")) as f:
        out = json.load(f)
    config.pop("quantization_config")
    assert out == config


def test_round_trip_is_bit_identical(release, tmp_path, capsys):
    """FP8 in -> bf16 Megatron -> FP8 out: same e4m3 bytes, same float32 scales (the zero block and the
    half-range blocks included), byte-identical config.json with its quantization_config."""
    back = str(tmp_path / "fp8")
    summary = _cli(["convert", "mcore-to-hf", "--ckpt", release["ckpt"], "--out", back, "--quantize", "fp8-block"],
                   capsys)
    assert summary["quantized"]["tensors"] == 32
    assert_same_hf_checkpoint(release["hf"], back)
    with open(os.path.join(release["hf"], "config.json"), "rb") as a, open(os.path.join(back, "config.json"),
                                                                           "rb") as b:
        assert a.read() == b.read()


def test_quantize_without_original_scales_is_lossless(release, tmp_path, capsys):
    """A checkpoint without the release's scales or quantization_config (e.g. trained from scratch): fresh
    power-of-two scales, the release's default modules_to_not_convert, and the same dequantized weights."""
    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(release["ckpt"], ckpt)
    shutil.rmtree(os.path.join(ckpt, "hf", "fp8_scales"))
    with open(os.path.join(ckpt, "hf", "config.json")) as f:
        config = json.load(f)
    original_qc = config.pop("quantization_config")
    with open(os.path.join(ckpt, "hf", "config.json"), "w") as f:
        json.dump(config, f)
    back = str(tmp_path / "fp8")
    _cli(["convert", "mcore-to-hf", "--ckpt", ckpt, "--out", back, "--quantize", "fp8-block"], capsys)
    with open(os.path.join(back, "config.json")) as f:
        qc = json.load(f)["quantization_config"]
    assert qc == dict(original_qc, modules_to_not_convert=sorted(original_qc["modules_to_not_convert"]))
    original, exported = hf_tensors(release["hf"]), hf_tensors(back)
    assert sorted(original) == sorted(exported)
    changed = 0
    for name, q in _quantized(original).items():
        scale, new_scale = original[name + "_scale_inv"], exported[name + "_scale_inv"]
        assert torch.equal(reference_dequantize(exported[name], new_scale), reference_dequantize(q, scale)), name
        changed += int((scale != new_scale).sum())
    assert changed >= 3  # the half-range and the doubled blocks now use the smaller, fresh scale


def test_block_scale_rule_by_hand():
    """A block with amax 1.0 -> scale 2^ceil(log2(1/448)) = 2^-8 (e4m3 values up to 256); a floor rule would
    give 2^-9 and overflow e4m3 (512 > 448); amax 448 -> scale 1; a float (non-ue8m0) scale is amax / 448."""
    w = torch.zeros(130, 129)
    w[0, 0], w[129, 128], w[5, 128] = 1.0, 448.0, -3.0  # blocks (0,0), (1,1) and (0,1); block (1,0) zero
    scale = fp8.block_scales(w, (128, 128), ue8m0=True)
    assert scale.tolist() == [[2.0 ** -8, 2.0 ** -7], [2.0 ** -22, 1.0]]  # zero: amax floor 1e-4 -> 2^-22
    q, s = fp8.quantize(w, (128, 128), ue8m0=True)
    assert q.float()[0, 0] == 256 and q.float()[129, 128] == 448 and q.float()[5, 128] == -384
    assert torch.equal(fp8.dequantize(q, s, (128, 128), torch.float32), w)
    assert torch.allclose(fp8.block_scales(w, (128, 128), ue8m0=False)[0, 0], torch.tensor(1.0 / 448))


def test_modules_to_not_convert_matching():
    patterns = ["model.language_model.layers.1", "mlp.gate", "lm_head", r"model\.visual\.blocks\.\d+\.attn"]
    keep = fp8.module_not_converted
    assert keep("model.language_model.layers.1.self_attn.q_proj", patterns)
    assert not keep("model.language_model.layers.11.self_attn.q_proj", patterns)  # module boundary
    assert keep("model.language_model.layers.3.mlp.gate", patterns)  # suffix
    assert not keep("model.language_model.layers.3.mlp.experts.0.gate_proj", patterns)
    assert keep("lm_head", patterns) and keep("model.visual.blocks.7.attn.qkv", patterns)  # regex
    assert not keep("model.visual.blocks.7.mlp.linear_fc1", patterns)
    fmt = fp8.BlockFP8.parse({"quant_method": "fp8", "weight_block_size": [128, 128], "scale_fmt": "ue8m0",
                              "modules_to_not_convert": patterns})
    assert fmt.quantizes("model.visual.blocks.7.mlp.linear_fc1.weight", 2)  # vision FP8 unless listed
    assert not fmt.quantizes("model.visual.blocks.7.mlp.linear_fc1.bias", 1)


def _edited_copy(release, tmp_path, edit_tensors=None, edit_config=None):
    hf_dir = str(tmp_path / "bad")
    shutil.copytree(release["hf"], hf_dir)
    if edit_config:
        with open(os.path.join(hf_dir, "config.json")) as f:
            config = json.load(f)
        edit_config(config)
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump(config, f)
    if edit_tensors:
        from safetensors.torch import load_file, save_file

        with open(os.path.join(hf_dir, "model.safetensors.index.json")) as f:
            index = json.load(f)
        weight_map = {}
        for file in sorted(set(index["weight_map"].values())):
            tensors = load_file(os.path.join(hf_dir, file))
            edit_tensors(tensors)
            save_file(tensors, os.path.join(hf_dir, file), metadata={"format": "pt"})
            weight_map.update({n: file for n in tensors})
        with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return hf_dir


SCALE = "model.language_model.layers.1.mlp.experts.2.down_proj.weight_scale_inv"


@pytest.mark.parametrize("case,expected", [
    ("missing_scale", f"FP8 tensor {SCALE[:-len('_scale_inv')]!r} has no {SCALE!r}"),
    ("scale_shape", f"scale {SCALE!r} has shape (2, 2) but"),
    ("quant_method", "quantization_config.quant_method='awq' is not supported"),
], ids=["missing_scale", "scale_shape", "quant_method"])
def test_bad_fp8_input(release, tmp_path, capsys, case, expected):
    """One error line naming the tensor, exit 2; an existing output replaced with --force stays untouched."""
    def drop(tensors):
        tensors.pop(SCALE, None)

    def widen(tensors):
        if SCALE in tensors:
            tensors[SCALE] = torch.ones(2, 2)

    def method(config):
        config["quantization_config"]["quant_method"] = "awq"

    edits = {"missing_scale": dict(edit_tensors=drop), "scale_shape": dict(edit_tensors=widen),
             "quant_method": dict(edit_config=method)}[case]
    hf_dir = _edited_copy(release, tmp_path, **edits)
    out = str(tmp_path / "out")
    assert expected in _cli_error(["convert", "hf-to-mcore", "--hf", hf_dir, "--out", out], capsys)
    _no_leftovers(out)
    os.makedirs(out)
    with open(os.path.join(out, "keep.txt"), "w") as f:
        f.write("x")
    _cli_error(["convert", "hf-to-mcore", "--hf", hf_dir, "--out", out, "--force"], capsys)
    assert os.listdir(out) == ["keep.txt"]


def test_reading_is_per_tensor(tmp_path):
    """Any FP8 weight with a scale sibling reads dequantized, whatever part it belongs to (here a vision block
    with bf16 scales): the reader's view has no scales, the weight in the config's dtype, others as stored."""
    from safetensors.torch import save_file

    from megatron_s1.conversion.hf_io import HFCheckpoint
    from tests.conversion.fp8_release import quantize_blockwise

    torch.manual_seed(0)
    qkv = "model.visual.blocks.0.attn.qkv.weight"
    q, scale = quantize_blockwise(torch.randn(200, 130))
    norm = torch.rand(130, dtype=torch.bfloat16)
    save_file({qkv: q, qkv + "_scale_inv": scale.bfloat16(), "model.visual.blocks.0.norm1.weight": norm},
              str(tmp_path / "model.safetensors"))
    config = {"text_config": {"dtype": "bfloat16"},
              "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                                      "scale_fmt": "ue8m0", "modules_to_not_convert": ["model.visual.blocks.0.norm1"]}}
    ckpt = HFCheckpoint(str(tmp_path), config)
    assert ckpt.shapes == {qkv: (200, 130), "model.visual.blocks.0.norm1.weight": (130,)}
    assert ckpt.dtypes[qkv] == torch.bfloat16 and ckpt.scales == {qkv: qkv + "_scale_inv"}
    assert torch.equal(ckpt.get(qkv), reference_dequantize(q, scale))
    assert torch.equal(ckpt.get("model.visual.blocks.0.norm1.weight"), norm)
