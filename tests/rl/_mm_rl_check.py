"""Helper (subprocess): RL with image prompts on a tiny InternS1Model (tiny MoE + tiny ViT: argv[2] = internvit,
the InternViT tiles of Intern-S1, or pro, the Intern-S1-Pro tower with its patch grids). Prints one JSON line."""
import json
import os
import sys

import torch


def _prompts(out_dir):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "mm_cpt"))
    from make_data import make_image  # noqa: E402  (the multimodal CPT demo's image generator)
    import numpy as np

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    path = os.path.join(out_dir, "prompts.jsonl")
    with open(path, "w") as f:
        for i in range(6):
            desc = make_image(os.path.join(out_dir, "images", f"{i}.png"), rng)
            ref = {"red": "1", "green": "2", "blue": "3"}[desc.split()[1]]
            prompt = ("Colour code (red 1, green 2, blue 3) of <image>?" if i % 2 else
                      "Colour code (red 1, green 2, blue 3)?")  # marker, or the image first
            f.write(json.dumps({"prompt": prompt, "images": [f"images/{i}.png"], "reference": ref,
                                "task": "toy_copy"}) + "\n")
    return path


def main():
    from megatron_s1.config import load_config
    from megatron_s1.rl.trainer import RLTrainer

    run_dir, arch = sys.argv[1], sys.argv[2]
    vision = ["vision.preset=tiny-vit", "vision.max_tiles=4"] if arch == "internvit" else ["vision.preset=tiny-pro-vit"]
    src = _prompts(run_dir)
    cfg = load_config(None, [f"run.dir={run_dir}/run", "model.preset=tiny-moe", "model.vocab_size=2112",
                             "model.params_dtype=fp32", "model.spec=local", *vision, "logging.tensorboard=false", f"rl.task=jsonl:{src}",
                             "rl.routing_replay=true", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
                             "rl.online_filter=false", "rl.max_new_tokens=1", "optimizer.lr=1e-2",
                             "checkpoint.save_final=false", "train.steps=2", "data.seq_length=16"])
    rl = RLTrainer(cfg, rollout_dtype="fp32")
    out = {"model": type(rl.model.module).__name__}
    recs = rl.source.records
    media = set(rl.t.task.media.all())
    out["media_banned"] = not (set(rl.allowed_list) & media) and len(rl.allowed_list) == 10
    enc = [rl.encode(r) for r in recs[:3]]
    # encoder rows per image: InternViT tiles (4 tokens each), Pro patches (a token per 2 x 2 of them)
    out["tiles"] = [int(p["pixel_values"].shape[0]) for _, p in enc]
    out["grids"] = [p["image_grid_thw"].tolist() for _, p in enc] if arch == "pro" else None
    per_row = 4 if arch == "internvit" else 0.25
    out["placeholders_match"] = all(ids.count(rl.t.task.media.img_context) == p["pixel_values"].shape[0] * per_row
                                    for ids, p in enc)
    # (1) KV cache vs full re-forward with images in the prompts (different tile counts -> left padding)
    eng = rl.engine
    ids, pix = [e[0] for e in enc], [e[1] for e in enc]
    rolls = []
    for kv in (False, True):
        eng.kv_cache = kv
        rolls.append(eng.generate(ids, 2, 3, top_k=1, allowed_tokens=rl.allowed_list,
                                  generator=torch.Generator().manual_seed(0), pixels=pix))
    out["kv_same_tokens"] = rolls[0].response_ids == rolls[1].response_ids
    out["kv_logp_diff"] = max(abs(a - b) for x, y in zip(rolls[0].rollout_logprobs, rolls[1].rollout_logprobs)
                              for a, b in zip(x, y))
    eng.kv_cache = True
    # (2) the image reaches the logits: same text, a same-size image of another colour
    from PIL import Image

    logps = []
    for colour in ("red", "blue"):
        path = os.path.join(run_dir, f"{colour}.png")
        Image.new("RGB", (56, 56), colour).save(path)
        ids_c, pix_c = rl.encode({"prompt": "Colour code?", "images": [path]})
        roll = eng.generate([ids_c], 1, 1, top_k=1, generator=torch.Generator().manual_seed(0), pixels=[pix_c])
        logps.append((len(ids_c), roll.response_ids[0], roll.rollout_logprobs[0][0]))
    out["same_len"] = logps[0][0] == logps[1][0]
    out["image_changes_logprob"] = abs(logps[0][2] - logps[1][2]) if logps[0][1] == logps[1][1] else 1.0
    # (3) two RL steps: vision tower frozen (rl.freeze_vision), projector and language model trained
    model = rl.model.module
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = rl.run()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    out["steps"] = summary["steps"]
    out["vision_changed"] = sorted(n for n in changed if n.startswith("vision_model."))
    out["projector_changed"] = any(n.startswith("vision_projection.") for n in changed)
    out["language_changed"] = any(n.startswith("language_model.") for n in changed)
    records = [json.loads(line) for line in open(os.path.join(run_dir, "run", "rl_metrics.jsonl"))]
    out["maxdiff"] = max(r["logp_train_rollout_maxdiff"] for r in records)
    out["losses"] = [r["loss"] for r in records]
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
