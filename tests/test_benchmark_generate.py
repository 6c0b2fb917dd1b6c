"""The instruments of ``benchmarks/generate.py`` (its timings are not tested: they belong to the
benchmark's own run): the one-function cached decoder writes what ``GPT.generate`` writes, also
past ``max_seq_len`` where both caches slide, the variant that scores every position writes what
uncached generation writes, and the operation count is a count."""

from __future__ import annotations

import pytest
import torch

from benchmark_scripts import load_benchmark
from moe_helpers.config import ModelConfig
from moe_helpers.model import GPT


DENSE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=16)


def _model(cfg: ModelConfig) -> GPT:
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)          # far from uniform attention, so positions matter
    return model


def test_the_one_function_decoder_writes_the_same_tokens_as_generate():
    bench = load_benchmark("generate")
    model = _model(DENSE)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    steps = 3 * DENSE.max_seq_len                                        # well past the window
    ours = model.generate(prompt, steps, temperature=0)
    assert torch.equal(bench.one_function(model)(prompt, steps), ours)
    assert len(set(ours[0].tolist())) > 3                                  # not one token repeated


def test_the_all_logits_variant_writes_what_uncached_generate_writes():
    bench = load_benchmark("generate")
    model = _model(DENSE)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    steps = 2 * DENSE.max_seq_len                                        # crops the context too
    ours = model.generate(prompt, steps, temperature=0, use_cache=False)
    theirs = bench.uncached_all_logits(model)(prompt, steps)
    assert torch.equal(theirs, ours) and not theirs.is_inference()
    rows = []
    model.lm_head.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[1]))
    bench.uncached_all_logits(model)(prompt, 3)
    assert rows == [5, 6, 7]                                             # every position scored


def test_the_one_function_decoder_refuses_what_it_does_not_cover():
    bench = load_benchmark("generate")
    for cfg in (DENSE.upcycled(num_experts=4, top_k=2), DENSE.replace(n_kv_heads=2)):
        with pytest.raises(ValueError, match="dense models without grouped-query attention"):
            bench.one_function(GPT(cfg))


def test_operations_per_cached_step_counts_the_step():
    bench = load_benchmark("generate")
    dense, moe = _model(DENSE), _model(DENSE.upcycled(num_experts=4, top_k=2))
    prompt = torch.tensor([[1, 2, 3]])
    dense_ops, moe_ops = (bench.operations_per_cached_step(m, prompt) for m in (dense, moe))
    # at least the 7 matrix products of each block plus the LM head
    assert dense_ops >= 7 * DENSE.n_layers + 1
    assert moe_ops > dense_ops                     # routing and two experts instead of one network
    assert bench.operations_per_cached_step(dense, prompt) == dense_ops


def test_the_average_uncached_context_is_what_uncached_generate_re_encodes():
    bench = load_benchmark("generate")
    model = _model(DENSE)
    prompt = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(3))
    steps = 20                                                           # passes max_seq_len (16)
    read = []
    model.tok_embeddings.register_forward_pre_hook(lambda module, args: read.append(args[0].shape[1]))
    model.generate(prompt, steps, temperature=0, use_cache=False)
    assert read == [min(5 + i, 16) for i in range(steps)]
    assert bench.average_uncached_context(5, steps, 16) == pytest.approx(sum(read) / steps)
    assert bench.average_uncached_context(8, 256, 256) == pytest.approx(135.39, abs=0.01)   # docs/benchmarks.md's 135
