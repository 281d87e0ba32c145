"""Logits of a converted tiny Intern-S1-Pro checkpoint (our InternS1Model, vision.arch=pro) against the release's
modeling_interns1_pro.py on the original HF files, text-only, with two images and with a two-frame video.

    python -m tests.models.pro._parity_worker HF_DIR CKPT_DIR [--tp N] [--ep N] [--etp N]   (torchrun for N > 1)

Rank 0 prints one JSON line {case: max |logit diff|, ..., "logit_scale": ...}.
"""
from __future__ import annotations

import argparse
import json

import torch


def cases(config: dict) -> dict:
    """{name: (tokens [b, s], release keyword inputs)}; our model gets the same ids and media."""
    gen = torch.Generator().manual_seed(0)
    vocab = min(config[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id"))
    text = lambda n: torch.randint(0, vocab, (n,), generator=gen).tolist()  # noqa: E731
    vs, ve = config["vision_start_token_id"], config["vision_end_token_id"]
    vc = config["vision_config"]
    width = 3 * vc["temporal_patch_size"] * vc["patch_size"] ** 2
    unit = vc["spatial_merge_size"] ** 2

    def item(grid, pad):
        t, h, w = grid
        return [vs] + [pad] * (h * w // unit) + [ve] if t == 1 else \
            sum(([vs] + [pad] * (h * w // unit) + [ve] for _ in range(t)), [])

    image_grid = torch.tensor([[1, 4, 6], [1, 8, 4]])
    image_ids = text(5) + item([1, 4, 6], config["image_token_id"]) + text(4) + \
        item([1, 8, 4], config["image_token_id"]) + text(3)
    video_grid = torch.tensor([[2, 4, 4]])
    video_ids = text(4) + item([2, 4, 4], config["video_token_id"]) + text(6)  # even: TP=2 runs SP
    return {
        "text": (torch.tensor([text(20), text(20)]), {}),
        "images": (torch.tensor([image_ids]),
                   {"pixel_values": torch.randn(int(image_grid.prod(-1).sum()), width, generator=gen),
                    "image_grid_thw": image_grid}),
        "video": (torch.tensor([video_ids]),
                  {"pixel_values_videos": torch.randn(int(video_grid.prod(-1).sum()), width, generator=gen),
                   "video_grid_thw": video_grid}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("hf")
    parser.add_argument("ckpt")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--etp", type=int, default=None)
    args = parser.parse_args()

    from tests.models.pro.release_code import load_release_checkpoint

    with open(f"{args.hf}/config.json") as f:
        config = json.load(f)
    inputs = cases(config)
    release = load_release_checkpoint(args.hf)  # before our CPU bridges patch torch.cuda (see verify.py)
    with torch.no_grad():
        expected = {name: release(input_ids=ids, use_cache=False, **media).logits.float()
                    for name, (ids, media) in inputs.items()}

    import torch.distributed as dist

    from megatron_s1.conversion.verify import load_megatron_model, model_logits
    from megatron_s1.models.interns1.model import MediaTokenIds

    vocab = config["text_config"]["vocab_size"]
    ids = MediaTokenIds(config["vision_start_token_id"], config["vision_end_token_id"], config["image_token_id"],
                        vocab - 1, vocab - 2, vocab - 3, video_context=config["video_token_id"])
    model, device = load_megatron_model(args.ckpt, args.tp, args.ep, "local", token_ids=ids, etp=args.etp)
    report = {"tp": args.tp, "ep": args.ep, "etp": args.etp or args.tp}
    for name, (tokens, media) in inputs.items():
        got = model_logits(model, device, tokens, **media)
        report[name] = (got - expected[name]).abs().max().item()
    report["logit_scale"] = min(v.abs().max().item() for v in expected.values())
    if dist.get_rank() == 0:
        print(json.dumps(report), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
