"""Cost of the per-file CRC-32 of checkpoints (megatron_s1/training/checkpointing.py) on a ~1 GB checkpoint.

Builds a dense model sized for a ~1 GB checkpoint (fp32 weights + Adam moments, 12 bytes per parameter), trains
one step on the bundled corpus (so the optimizer state exists), then, --repeats times:
- saves it (`Checkpointer.save`, blocking: shards, then the CRC-32 of every file into trainer_state.json) and
  times the CRC-32 pass alone over the same files;
- validates it as a resume does: sizes only (`checkpoint_problem(checksums=False)`) and with the CRC-32s
  (`checksums=True`), then loads it (`Checkpointer.load`).
Prints one JSON object (medians). Files are read from the page cache right after they were written; on a cold
cache the verification also pays the disk read, which then warms the cache for the load that follows.

    python bench/checkpoint_crc.py --out runs/bench_checkpoint_crc
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "runs", "bench_checkpoint_crc"), help="work directory "
                   "(removed first)")
    p.add_argument("--layers", type=int, default=7)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from megatron_s1 import console

    console.configure()
    from megatron_s1.config import load_config
    from megatron_s1.data.preprocess import preprocess
    from megatron_s1.training.checkpointing import checkpoint_files, checkpoint_problem, file_crc32
    from megatron_s1.training.loop import Trainer

    shutil.rmtree(args.out, ignore_errors=True)
    prefix = os.path.join(args.out, "data", "corpus")
    os.makedirs(os.path.dirname(prefix))
    preprocess(os.path.join(REPO, "megatron_s1", "data", "corpus", "tiny_corpus.jsonl"), prefix, None, "text", 1,
               progress=False)
    h = args.hidden
    cfg = load_config(os.path.join(REPO, "examples", "cpt", "tiny_cpu.yaml"), [
        "model.preset=tiny-dense", f"model.num_layers={args.layers}", f"model.hidden_size={h}",
        f"model.num_attention_heads={h // 64}", f"model.num_query_groups={h // 256}", "model.kv_channels=64",
        f"model.ffn_hidden_size={h * 11 // 4}", "model.vocab_size=4096", f"run.dir={args.out}/run",
        f"data.blend=[{prefix}]", "data.seq_length=128", "data.micro_batch_size=1",
        "train.global_batch_tokens=[[0, 128]]", "logging.tensorboard=false", "checkpoint.keep_last=1"])
    trainer = Trainer(cfg)
    trainer._maybe_resume()
    trainer.train_ds, trainer.valid_ds, _ = trainer._datasets()
    trainer.train_step()  # Adam moments exist from here on
    params = sum(p.numel() for chunk in trainer.model for p in chunk.parameters())

    rows = []
    for _ in range(args.repeats):
        save_s, path = _timed(lambda: trainer.save(blocking=True))
        files = [os.path.join(path, n) for n in checkpoint_files(path)]
        crc_s, _ = _timed(lambda: [file_crc32(f) for f in files])
        sizes_s, problem = _timed(lambda: checkpoint_problem(path, checksums=False))
        verify_s, problem_crc = _timed(lambda: checkpoint_problem(path, checksums=True))
        assert problem is None and problem_crc is None, (problem, problem_crc)
        load_s, _ = _timed(lambda: trainer.checkpointer.load(path))
        rows.append(dict(save_s=save_s, save_crc_pass_s=crc_s, verify_sizes_s=sizes_s, verify_crc_s=verify_s,
                         load_s=load_s))
    size = sum(os.path.getsize(f) for f in files) + os.path.getsize(os.path.join(path, "trainer_state.json"))
    med = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
    report = dict(parameters=params, checkpoint_bytes=size, files=len(files) + 1, repeats=args.repeats, **med,
                  crc_gb_per_s=round(size / 1e9 / med["save_crc_pass_s"], 2),
                  crc_share_of_save=round(med["save_crc_pass_s"] / med["save_s"], 3),
                  crc_share_of_resume=round(med["verify_crc_s"] / (med["verify_crc_s"] + med["load_s"]), 3))
    print(json.dumps(report))
    trainer.checkpointer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
