"""Does the offline corpus leave room for a bigger model?  Old generator vs. story grammar.

For each corpus -- ``story_generator.offline_corpus`` (the first offline stand-in) and
``story_grammar.stories`` (the grammar) -- it trains a byte-level BPE tokenizer
(vocabulary 2048, the ``laptop`` preset's), encodes the train and validation stories,
and trains two dense models for the same number of steps with the ``laptop`` preset's
``TrainConfig`` (batch 16 x 128, peak lr 3e-3, cosine decay):

* ``laptop`` -- ``preset("laptop").model`` (d_model 128, 4 layers, 4 heads);
* ``big``    -- about 4x its parameters (d_model 256, 5 layers, 8 heads, d_ff 768).

It prints the final validation loss of each (``evaluate`` over ``--eval-batches`` fixed
batches) and the gap big - laptop per corpus.  The issue's target: on the grammar corpus
the big model ends at least 0.15 nats below the laptop model.

    OMP_NUM_THREADS=2 python benchmarks/offline_headroom.py                 # 300 steps
    OMP_NUM_THREADS=2 python benchmarks/offline_headroom.py --steps 100     # quicker
    OMP_NUM_THREADS=2 python benchmarks/offline_headroom.py --corpora grammar

On 2 CPU cores 300 steps take about 3.5 min for the laptop model and about 15 min for the big one.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from moe_helpers import story_grammar, story_generator
from moe_helpers.accounting import count_parameters
from moe_helpers.config import preset
from moe_helpers.data import TokenData, train_tokenizer
from moe_helpers.model import GPT
from moe_helpers.train import evaluate, train_phase

VOCAB_SIZE = 2048


def corpus(name: str, train_stories: int, val_stories: int) -> tuple[list[str], list[str]]:
    """One corpus as (train stories, validation stories)."""
    if name == "old offline":
        return story_generator.offline_corpus("train"), story_generator.offline_corpus("validation")
    return story_grammar.stories("train", train_stories), story_grammar.stories("validation", val_stories)


def token_data(name: str, train: list[str], val: list[str]) -> TokenData:
    """Tokenizer trained on the training stories; both splits encoded into uint16 arrays."""
    tokenizer = train_tokenizer(train, vocab_size=VOCAB_SIZE, cache=False)
    encode = lambda texts: np.asarray(tokenizer.encode_stories(texts), dtype=np.uint16)  # noqa: E731
    return TokenData(train=encode(train), val=encode(val), tokenizer=tokenizer, source=name)


def models() -> dict:
    laptop = preset("laptop").model
    big = dataclasses.replace(laptop, d_model=256, n_layers=5, n_heads=8, d_ff=768)
    return {"laptop": laptop, "big": big}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-stories", type=int, default=20_000)
    parser.add_argument("--val-stories", type=int, default=1_000)
    parser.add_argument("--eval-batches", type=int, default=40)
    parser.add_argument("--corpora", nargs="+", default=["old offline", "grammar"], choices=["old offline", "grammar"],
                        help="which corpora to run (default both)")
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = dataclasses.replace(preset("laptop").train, steps_phase1=args.steps, eval_every=max(args.steps, 1),
                                 log_every=max(args.steps // 4, 1), device="cpu", precision="fp32")
    for name, cfg in models().items():
        print(f"{name:7s} {count_parameters(GPT(cfg)).total / 1e6:6.2f} M parameters  "
              f"(d_model {cfg.d_model}, layers {cfg.n_layers}, heads {cfg.n_heads}, d_ff {cfg.d_ff})")
    results = {}
    for name in args.corpora:
        started = time.perf_counter()
        train, val = corpus(name, args.train_stories, args.val_stories)
        data = token_data(name, train, val)
        stats = story_grammar.corpus_statistics(train)
        print(f"\n{name}: {len(train):,} train stories, {len(data.train) / 1e6:.2f} M train tokens, "
              f"{len(data.val) / 1e3:.0f} k val tokens, {stats['distinct_words']:,} distinct words "
              f"({time.perf_counter() - started:.1f} s to build and tokenize)")
        for size, cfg in models().items():
            started = time.perf_counter()
            model = GPT(cfg)
            train_phase(model, data, config, progress=False, verbose=False)
            loss = evaluate(model, data, config.batch_size, config.seq_len, batches=args.eval_batches)
            results[name, size] = loss
            print(f"  {size:7s} val loss {loss:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n{'corpus':12s} {'laptop':>8s} {'big':>8s} {'big - laptop':>13s}   ({args.steps} steps, batch "
          f"{config.batch_size} x {config.seq_len}, lr {config.lr_phase1})")
    for name in args.corpora:
        small, big = results[name, "laptop"], results[name, "big"]
        print(f"{name:12s} {small:8.3f} {big:8.3f} {big - small:+13.3f}")


if __name__ == "__main__":
    main()
