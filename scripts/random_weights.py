"""Seeded random weights for a model folder that holds config.json and tokenizer files only.

For timing and memory checks where the real weights cannot travel (the GPU machine of
scripts/gpu_check.sh has no network and takes at most 64 MiB of files): every shape, dtype and
code path is the real model's; the numbers it gives about quality mean nothing.

    python scripts/random_weights.py DIR [--seed 0]      # writes DIR/model.safetensors
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repo root holds model.py
import model as M  # noqa: E402
from support import files  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = M.load_config(a.dir)
    torch.manual_seed(a.seed)
    model = M.Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():      # the usual LLaMA init: N(0, 0.02), norms 1
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.02)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and cfg.tie_word_embeddings)}
    files.atomic_save(state, Path(a.dir) / "model.safetensors")
    print(f"{a.dir}/model.safetensors: {sum(v.numel() for v in state.values()):,} random parameters")


if __name__ == "__main__":
    main()
