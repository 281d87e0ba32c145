"""Helper (run in a subprocess): two checkpoints of a tiny model with constant weights 1 and 3; with a second
argument, load that (averaged) checkpoint and check every parameter is 2.5."""
import sys

import torch

from megatron_s1.config import load_config
from megatron_s1.training.loop import Trainer


def main():
    run_dir = sys.argv[1]
    extra = [f"checkpoint.pretrained={sys.argv[2]}", f"run.dir={run_dir}/check"] if len(sys.argv) > 2 else []
    cfg = load_config(None, [f"run.dir={run_dir}", "model.preset=tiny-dense", "model.params_dtype=fp32",
                             "model.spec=local", "data.mock=true", "checkpoint.keep_last=0",
                             "logging.tensorboard=false", *extra])
    trainer = Trainer(cfg)
    if extra:  # check mode: the averaged checkpoint holds the weighted mean everywhere
        trainer._maybe_resume()
        params = list(trainer.model[0].module.parameters())
        print("CHECK", len(params), all(torch.allclose(p, torch.full_like(p, 2.5)) for p in params))
        return
    for step, value in ((1, 1.0), (2, 3.0)):
        with torch.no_grad():
            for p in trainer.model[0].module.parameters():
                p.fill_(value)
        trainer.state["step"] = step
        trainer.save()


if __name__ == "__main__":
    main()
