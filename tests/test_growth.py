"""Growth operators preserve the function (``moe_helpers.growth``).

Every operator is applied to a model that has been *trained* for a few dozen
steps (at initialisation many weights are nearly interchangeable, which would
hide mistakes) and measured on real validation batches of the offline corpus:

* max |logits after - logits before| < 1e-4 in float32 and < 1e-9 in float64;
* the cross-entropy jump (aux losses excluded) < 1e-5 in float32, < 1e-9 in float64;
* width growth leaves every top-k routing decision unchanged;
* the input model is bit-identical afterwards and shares no storage with the result;
* the grown model has exactly ``count_from_config(new config)`` parameters.

Then the details of each recipe: new blocks are copies of their neighbour with
zero output projections, ``noise=0`` clones stay clones under AdamW while the
zero-sum noise separates them, upcycling without renormalisation scales the
output by the sum of the chosen probabilities, and bad arguments raise ValueError.
"""

from __future__ import annotations

import pytest
import torch

from moe_helpers.accounting import count_from_config, count_parameters
from moe_helpers.config import TrainConfig, insertion_plan
from moe_helpers.growth import grow, grow_depth, grow_width, preservation_report, split_experts, upcycle
from moe_helpers.model import GPT
from moe_helpers.train import train_phase

TRAIN_SEQ_LEN = 32
EVAL_BATCH, EVAL_SEQ_LEN = 8, 64          # 512 real validation tokens per report
TOLERANCE = {  # dtype: (max |delta logits|, |cross-entropy jump|)
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-9, 1e-9),
}

# name -> (operator, which models it applies to, the config it must produce)
OPERATIONS = {
    "width x2": (lambda m: grow_width(m, 2, verbose=False), "all", lambda c: c.widened(2)),
    "width x3": (lambda m: grow_width(m, 3, verbose=False), "all", lambda c: c.widened(3)),
    "depth +1 interleave": (lambda m: grow_depth(m, 1, "interleave"), "all",
                            lambda c: c.deepened(1, "interleave")),
    "depth +1 top": (lambda m: grow_depth(m, 1, "top"), "all", lambda c: c.deepened(1, "top")),
    "depth +n_layers interleave": (lambda m: grow_depth(m, m.cfg.n_layers, "interleave"), "all",
                                   lambda c: c.deepened(c.n_layers, "interleave")),
    "depth +n_layers top": (lambda m: grow_depth(m, m.cfg.n_layers, "top"), "all",
                            lambda c: c.deepened(c.n_layers, "top")),
    "bilateral x2 +1": (lambda m: grow(m, 2, 1, verbose=False), "all", lambda c: c.widened(2).deepened(1)),
    "split experts x2": (lambda m: split_experts(m, 2), "moe", lambda c: c.split(2)),
    "upcycle 4 top-2": (lambda m: upcycle(m, 4, 2), "dense", lambda c: c.upcycled(4, 2)),
}

BASES = ("dense", "dense gqa tied", "moe", "moe gqa tied", "moe shared+dense-first switch", "moe aux-free bias")


def _train(model: GPT, data, steps: int, lr: float) -> GPT:
    settings = TrainConfig(steps_phase1=steps, lr_phase1=lr, batch_size=8, seq_len=TRAIN_SEQ_LEN, warmup_steps=2,
                           log_every=steps, eval_every=steps, eval_batches=1, device="cpu")
    train_phase(model, data, settings, progress=False, verbose=False)
    return model


@pytest.fixture(scope="module")
def trained(tiny, tiny_preset):
    """The base models of the grid, each trained for a few dozen steps on real tokens.

    * dense: the ``tiny`` preset's model;
    * dense gqa tied: 4 query heads sharing 2 key/value heads, tied embedding;
    * moe: the trained dense model upcycled (4 experts, top-2) and trained on;
    * moe gqa tied: an MoE with grouped-query attention and a tied embedding;
    * moe shared+dense-first switch: a shared expert, a leading dense block with
      its own width, top-1 routing without renormalisation (Switch style);
    * moe aux-free bias: an MoE whose expert bias (aux-loss-free balancing) has
      moved away from zero while it trained, so growth must carry it over.
    """
    base = tiny_preset.model
    torch.manual_seed(0)
    models = {"dense": _train(GPT(base), tiny, 30, 3e-3)}
    models["dense gqa tied"] = _train(GPT(base.replace(n_heads=4, n_kv_heads=2, tie_embeddings=True)),
                                      tiny, 30, 3e-3)
    models["moe"] = _train(upcycle(models["dense"], 4, 2), tiny, 15, 1e-3)
    models["moe gqa tied"] = _train(GPT(base.replace(n_heads=4, n_kv_heads=2, tie_embeddings=True,
                                                     num_experts=4, top_k=2)), tiny, 30, 3e-3)
    models["moe shared+dense-first switch"] = _train(GPT(base.replace(
        n_layers=3, num_experts=4, top_k=1, renormalize_top_k=False, num_shared_experts=1, shared_d_ff=32,
        first_k_dense=1, dense_d_ff=96)), tiny, 30, 3e-3)
    models["moe aux-free bias"] = _train(GPT(base.replace(num_experts=4, top_k=2, bias_update_rate=0.01)),
                                         tiny, 30, 3e-3)
    for model in models.values():
        model.eval()
    return models


@pytest.fixture(scope="module")
def val_batch(tiny):
    """A fixed batch of real validation tokens and their next-token targets, (8, 64) each."""
    return tiny.batch("val", EVAL_BATCH, EVAL_SEQ_LEN, generator=torch.Generator().manual_seed(1))


def _in_dtype(model: GPT, dtype: torch.dtype) -> GPT:
    """A copy of ``model`` in ``dtype`` (the model itself for float32)."""
    if dtype == torch.float32:
        return model
    copy = GPT(model.cfg).to(dtype)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def _pairs():
    """Every (base model, operation) pair the operation applies to."""
    for base in BASES:
        for name, (_, applies_to, _) in OPERATIONS.items():
            if applies_to == "all" or base.startswith(applies_to):
                yield base, name


def _cases():
    for base, name in _pairs():
        for dtype in (torch.float32, torch.float64):
            yield pytest.param(base, name, dtype, id=f"{base}-{name}-{str(dtype)[6:]}")


def _snapshot(model: GPT) -> dict:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


# ------------------------------------------------------------ the whole grid
@pytest.mark.parametrize("base, operation, dtype", list(_cases()))
def test_growth_preserves_the_function(trained, val_batch, base, operation, dtype):
    model = _in_dtype(trained[base], dtype)
    grow_op, _, expected_config = OPERATIONS[operation]
    before = _snapshot(model)

    grown = grow_op(model)
    report = preservation_report(model, grown, *val_batch)

    max_logit_tolerance, jump_tolerance = TOLERANCE[dtype]
    assert report.max_abs_logit_diff < max_logit_tolerance, str(report)
    assert abs(report.jump) < jump_tolerance, str(report)
    assert report.loss_before < 6.0, "the base model should be trained, not at its initial loss ln(512)=6.24"
    assert next(grown.parameters()).dtype == dtype
    assert grown.cfg == expected_config(model.cfg)
    # the input model is untouched, bit for bit, and shares no storage with the grown one
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    with torch.no_grad():
        for parameter in grown.parameters():
            parameter.fill_(0.0)
    assert all(torch.equal(before[name], model.state_dict()[name]) for name in before)


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("base", [b for b in BASES if b.startswith("moe")])
def test_width_growth_keeps_every_routing_decision(trained, val_batch, base, factor):
    grown = grow_width(trained[base], factor, verbose=False)
    report = preservation_report(trained[base], grown, *val_batch)
    assert report.routing_unchanged is True


@pytest.mark.parametrize("base, operation", [pytest.param(*pair, id="-".join(pair)) for pair in _pairs()])
def test_parameter_count_matches_the_new_config(trained, base, operation):
    grown = OPERATIONS[operation][0](trained[base])
    measured, by_formula = count_parameters(grown), count_from_config(grown.cfg)
    assert measured.total == by_formula.total
    assert measured.active == by_formula.active
    assert measured.by_part == by_formula.by_part


def test_width_growth_multiplies_matrices_by_factor_squared(trained):
    """Every matrix grows by factor^2 except the embedding and LM head (vocab x d: factor)."""
    small = count_from_config(trained["moe"].cfg).by_part
    large = count_parameters(grow_width(trained["moe"], 3, verbose=False)).by_part
    for part in ("attention", "experts"):
        assert large[part] == 9 * small[part]
    for part in ("embedding", "lm_head", "router", "norms"):
        assert large[part] == 3 * small[part]


# ------------------------------------------------------------------- depth
@pytest.mark.parametrize("where", ["interleave", "top"])
@pytest.mark.parametrize("base", ["dense", "moe", "moe shared+dense-first switch"])
def test_new_blocks_copy_their_neighbour_with_zero_output_projections(trained, base, where):
    model = trained[base]
    new_layers = model.cfg.n_layers
    grown = grow_depth(model, new_layers, where)
    plan = insertion_plan(model.cfg.n_layers, new_layers, where)
    old_state, new_state = model.state_dict(), grown.state_dict()
    seen, zeroed = set(), 0
    for new_index, source in enumerate(plan):
        is_new = source in seen
        seen.add(source)
        for name, tensor in old_state.items():
            if not name.startswith(f"layers.{source}."):
                continue
            grown_tensor = new_state[f"layers.{new_index}." + name[len(f"layers.{source}."):]]
            if is_new and name.endswith(("attention.wo.weight", "w2.weight")):
                assert torch.count_nonzero(grown_tensor) == 0, name
                zeroed += 1
            else:
                assert torch.equal(grown_tensor, tensor), name
    assert zeroed >= 2 * new_layers   # at least one wo and one w2 per new block


def test_new_block_is_the_identity_on_the_residual_stream(trained):
    grown = grow_depth(trained["moe"], 1, "top")
    x = torch.randn(2, 16, grown.cfg.d_model, generator=torch.Generator().manual_seed(0))
    y, _ = grown.layers[-1](x)
    assert torch.equal(y, x)


# -------------------------------------------------------- symmetry breaking
def _twin_gaps(model: GPT, idx: torch.Tensor) -> tuple[float, float]:
    """Largest relative difference between twin units after width growth by 2:
    FFN hidden units h and h + d_ff of block 0, and residual-stream channels
    j and j + d_model entering the final norm, on the tokens ``idx``."""
    captured = {}
    first_ffn = model.layers[0].ffn
    down = first_ffn.experts[0].w2 if model.cfg.is_moe else first_ffn.w2
    hooks = [down.register_forward_pre_hook(lambda module, inputs: captured.__setitem__("hidden", inputs[0])),
             model.norm.register_forward_pre_hook(lambda module, inputs: captured.__setitem__("stream", inputs[0]))]
    model.eval()
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    gaps = []
    for key in ("hidden", "stream"):
        values = captured[key]
        first, second = values.chunk(2, dim=-1)                       # twins: unit u and u + width/2
        gaps.append(((first - second).abs().max() / values.abs().max()).item())
    return gaps[0], gaps[1]


@pytest.mark.parametrize("base", ["dense", "moe"])
def test_without_noise_clones_stay_identical_under_adamw(trained, tiny, val_batch, base):
    grown = grow_width(trained[base], 2, noise=0.0, verbose=False)
    _train(grown, tiny, 6, 1e-3)
    first_ffn = grown.layers[0].ffn
    w1 = (first_ffn.experts[0] if grown.cfg.is_moe else first_ffn).w1.weight     # (2 d_ff, 2 d_model)
    d_ff, d_model = w1.shape[0] // 2, w1.shape[1] // 2
    assert torch.equal(w1[:d_ff], w1[d_ff:])                 # twin hidden units: the same rows
    assert torch.equal(w1[:, :d_model], w1[:, d_model:])     # twin inputs: the same columns
    embedding = grown.tok_embeddings.weight                  # (V, 2 d_model)
    assert torch.equal(embedding[:, :d_model], embedding[:, d_model:])   # residual-stream twins
    assert _twin_gaps(grown, val_batch[0]) == (0.0, 0.0)


@pytest.mark.parametrize("base", ["dense", "moe"])
def test_zero_sum_noise_lets_clones_separate(trained, tiny, val_batch, base):
    grown = grow_width(trained[base], 2, noise=0.01, verbose=False)
    hidden_gap, stream_gap = _twin_gaps(grown, val_batch[0])
    assert hidden_gap < 1e-5 and stream_gap < 1e-5           # the function is preserved ...
    _train(grown, tiny, 6, 1e-3)
    hidden_gap, stream_gap = _twin_gaps(grown, val_batch[0])
    assert hidden_gap > 1e-3 and stream_gap > 1e-3           # ... yet training pulls the twins apart
    embedding = grown.tok_embeddings.weight
    d_model = embedding.shape[1] // 2
    assert (embedding[:, :d_model] - embedding[:, d_model:]).abs().max() > 1e-4


def test_a_tied_embedding_is_untied_with_a_note(trained, capsys):
    grown = grow_width(trained["dense gqa tied"], 2)
    assert "untied" in capsys.readouterr().out
    assert not grown.cfg.tie_embeddings
    assert grown.lm_head.weight.data_ptr() != grown.tok_embeddings.weight.data_ptr()


# ---------------------------------------------------------------- upcycling
def test_upcycling_without_renormalisation_scales_by_the_chosen_probabilities(trained, val_batch):
    dense = trained["dense"]
    moe = upcycle(dense, 4, 2, renormalize=False)
    report = preservation_report(dense, moe, *val_batch)
    logit_tolerance, jump_tolerance = TOLERANCE[torch.float32]
    assert report.max_abs_logit_diff > 100 * logit_tolerance, str(report)     # a real jump, not rounding
    assert abs(report.jump) > 10 * jump_tolerance, str(report)

    x = torch.randn(64, dense.cfg.d_model, generator=torch.Generator().manual_seed(0))
    layer = moe.layers[0].ffn
    with torch.no_grad():
        chosen_probability = layer.router(x).softmax(-1).topk(2, dim=-1).values.sum(-1, keepdim=True)  # (N, 1)
        torch.testing.assert_close(layer(x), dense.layers[0].ffn(x) * chosen_probability)


def test_router_gets_no_language_model_gradient_while_experts_are_identical(trained, val_batch):
    moe = upcycle(_in_dtype(trained["dense"], torch.float64), 4, 2)
    moe.train()
    moe(*val_batch).loss.backward()                            # the LM loss only, no aux losses
    for layer in moe.moe_layers:
        assert layer.router.weight.grad.abs().max() < 1e-12
        assert layer.experts[0].w1.weight.grad.abs().max() > 1e-6


def test_each_expert_is_a_copy_of_the_dense_ffn(trained):
    dense = trained["dense"]
    moe = upcycle(dense, 3, 1)
    for dense_block, moe_block in zip(dense.layers, moe.layers):
        for expert in moe_block.ffn.experts:
            for weight in ("w1", "w2", "w3"):
                assert torch.equal(getattr(expert, weight).weight, getattr(dense_block.ffn, weight).weight)


# ------------------------------------------------------------ bad arguments
BAD_CALLS = {  # id: (call on the trained models, what the error message names)
    "width factor 1.5": (lambda m: grow_width(m["dense"], 1.5), "factor"),
    "width factor 2.0 (a float)": (lambda m: grow_width(m["dense"], 2.0), "factor"),
    "width factor 0": (lambda m: grow_width(m["dense"], 0), "factor"),
    "width factor -2": (lambda m: grow_width(m["dense"], -2), "factor"),
    "grow with -1 layers": (lambda m: grow(m["dense"], 2, -1), "new_layers"),
    "grow with width factor 0.5": (lambda m: grow(m["dense"], 0.5, 1), "factor"),
    "depth -1 layers": (lambda m: grow_depth(m["dense"], -1), "new_layers"),
    "depth 1.0 layers": (lambda m: grow_depth(m["dense"], 1.0), "new_layers"),
    "depth where=middle": (lambda m: grow_depth(m["dense"], 1, where="middle"), "where"),
    "split 3 does not divide d_ff 64": (lambda m: split_experts(m["moe"], 3), "divisible"),
    "split factor 0": (lambda m: split_experts(m["moe"], 0), "factor"),
    "split factor 1.5": (lambda m: split_experts(m["moe"], 1.5), "factor"),
    "split a dense model": (lambda m: split_experts(m["dense"], 2), "dense"),
    "upcycle an MoE": (lambda m: upcycle(m["moe"], 4, 2), "dense"),
    "upcycle top_k 5 of 4": (lambda m: upcycle(m["dense"], 4, 5), "top_k"),
    "upcycle into 0 experts": (lambda m: upcycle(m["dense"], 0, 1), "num_experts"),
    "upcycle into 2.0 experts": (lambda m: upcycle(m["dense"], 2.0, 1), "num_experts"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_raise_value_error(trained, case):
    bad_call, message = BAD_CALLS[case]
    with pytest.raises(ValueError, match=message):
        bad_call(trained)


def test_the_aux_free_base_has_a_learned_expert_bias(trained):
    """Otherwise the growth grid would not test that the bias is carried over."""
    biases = [layer.expert_bias for layer in trained["moe aux-free bias"].moe_layers]
    assert all(bias.abs().max() >= 0.02 for bias in biases), biases


def test_upcycling_a_config_with_aux_free_balancing_starts_with_a_zero_bias(trained):
    dense = trained["dense"]
    source = GPT(dense.cfg.replace(bias_update_rate=0.01))
    source.load_state_dict(dense.state_dict())
    moe = upcycle(source, 4, 2)
    assert all(layer.expert_bias.eq(0).all() and layer.bias_update_rate == 0.01 for layer in moe.moe_layers)
