"""Does the offline corpus leave room for a bigger model?  The laptop model against one 4x its size.

The offline corpus (``story_grammar``) is meant to be a stand-in on which the course's
experiments mean something: a bigger model should learn more from it in the same
number of steps, as it would on real TinyStories.  This script measures that.

It prepares the ``laptop`` preset's data exactly as the notebooks and ``make run`` do
(``prepare_preset_data``: the preset's 20 k-story budget, its 2048-token BPE tokenizer,
the token cache), then trains two dense models for the same number of steps with the
``laptop`` preset's ``TrainConfig`` (batch 16 x 128, cosine decay, seed 0):

* ``laptop`` -- ``preset("laptop").model`` (d_model 128, 4 layers, 4 heads; 1.38 M parameters),
  at the preset's peak learning rate 3e-3;
* ``big``    -- 3.9x its parameters (d_model 384, 2 layers, 6 heads, d_ff 1152; 5.41 M), at
  peak learning rate 2e-3 (its best of 1.5e-3, 2e-3 and 3e-3 in a sweep).

Why so wide and shallow?  Among the ~4x shapes tried on this corpus at 300 steps (laptop
1.37), depth cost speed: d_model 256 x 4 layers ended at 1.23, 320 x 3 at 1.19 and
384 x 2 at 1.10.  In a run this short, width learns faster.

It prints the corpus statistics, each model's final validation loss (``evaluate`` over
``--eval-batches`` fixed batches) and the gap, and exits non-zero unless the big model
ends at least ``--margin`` nats (default 0.15, the course's target) below the laptop
model.  ``tests/test_story_grammar.py`` runs a small, fast version of the same check.

    OMP_NUM_THREADS=2 python benchmarks/offline_headroom.py                 # 300 steps, both models
    OMP_NUM_THREADS=2 python benchmarks/offline_headroom.py --steps 100     # quicker
    OMP_NUM_THREADS=2 python benchmarks/offline_headroom.py --data /shared/tinystories   # real stories

Measured on 2 CPU cores (300 steps): the laptop model ~35 s, the big one ~100 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from moe_helpers import story_grammar
from moe_helpers.accounting import count_parameters
from moe_helpers.config import preset
from moe_helpers.data import load_stories, prepare_preset_data
from moe_helpers.model import GPT
from moe_helpers.train import evaluate, train_phase


PEAK_LR = {"laptop": 3e-3, "big": 2e-3}


def models() -> dict:
    """The ``laptop`` preset's dense model and one with about 4x its parameters."""
    laptop = preset("laptop").model
    big = dataclasses.replace(laptop, d_model=384, n_layers=2, n_heads=6, d_ff=1152)
    return {"laptop": laptop, "big": big}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-batches", type=int, default=40)
    parser.add_argument("--data", default="offline", help="offline (default), hub, a hub-shaped folder or a file")
    parser.add_argument("--margin", type=float, default=0.15, help="nats the big model must gain (default 0.15)")
    args = parser.parse_args()

    laptop = preset("laptop")
    config = dataclasses.replace(laptop.train, steps_phase1=args.steps, eval_every=max(args.steps, 1),
                                 log_every=max(args.steps // 4, 1), device="cpu", precision="fp32")
    sizes = {name: count_parameters(GPT(cfg)).total for name, cfg in models().items()}
    for name, cfg in models().items():
        print(f"{name:7s} {sizes[name] / 1e6:6.2f} M parameters ({sizes[name] / sizes['laptop']:.1f}x)  "
              f"(d_model {cfg.d_model}, layers {cfg.n_layers}, heads {cfg.n_heads}, d_ff {cfg.d_ff}, "
              f"peak lr {PEAK_LR[name]})")

    started = time.perf_counter()
    data = prepare_preset_data(laptop, source=args.data)
    stats = story_grammar.corpus_statistics(load_stories(args.data, "train", limit=laptop.data.train_stories,
                                                         verbose=False))
    print(f"\ncorpus: {data.stories['train']:,} train stories, {len(data.train) / 1e6:.2f} M train tokens, "
          f"{len(data.val) / 1e3:.0f} k val tokens, {stats['distinct_words']:,} distinct words, "
          f"{stats['mean_words_per_story']:.0f} words a story ({time.perf_counter() - started:.1f} s)")
    tokens_read = args.steps * config.batch_size * config.seq_len
    print(f"training reads {tokens_read / 1e6:.2f} M tokens = {tokens_read / len(data.train):.2f} passes")

    losses = {}
    for name, cfg in models().items():
        started = time.perf_counter()
        torch.manual_seed(0)
        model = GPT(cfg)
        train_phase(model, data, config.replace(lr_phase1=PEAK_LR[name]), progress=False, verbose=False)
        losses[name] = evaluate(model, data, config.batch_size, config.seq_len, batches=args.eval_batches)
        print(f"  {name:7s} val loss {losses[name]:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)

    gap = losses["laptop"] - losses["big"]
    print(f"\n{args.steps} steps, batch {config.batch_size} x {config.seq_len}: "
          f"laptop {losses['laptop']:.3f}, big {losses['big']:.3f}, the big model is {gap:.3f} nats lower "
          f"(target >= {args.margin})")
    if gap < args.margin:
        print("FAIL: the bigger model does not gain enough; the corpus leaves too little headroom")
        return 1
    print("OK: capacity matters on this corpus")
    return 0


if __name__ == "__main__":
    sys.exit(main())
