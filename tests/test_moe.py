"""Tests of the Mixture-of-Experts layer, its gating choices and auxiliary losses.

The layer's sorted, batched dispatch is checked against a slow reference that
follows the definition one token at a time (Shazeer et al. 2017; Mixtral):

    p = softmax(x W_r),  S = top-k(p),  g_i = p_i / sum_{j in S} p_j,  y = sum_{i in S} g_i E_i(x)

in float64, forward and gradients, so that any indexing or weighting slip in
the dispatch shows up as a number, not as a slightly worse loss curve.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from moe_helpers.config import ModelConfig, TrainConfig
from moe_helpers.layers import FeedForward
from moe_helpers.model import GPT
from moe_helpers.train import train_phase
from moe_helpers.moe import (MoELayer, count_per_expert, load_balancing_loss, router_z_loss,
                             sequence_balance_loss)


# ----------------------------------------------------------------- references
def reference_moe(layer: MoELayer, tokens: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """The MoE output computed one token at a time, straight from the definition
    (plus the always-active shared experts, DeepSeekMoE).

    ``tokens``: (N, d_model).  With ``capacity``, each expert serves at most
    that many token slots, GShard's way: every token's first choice is queued
    (in token order) before any second choice; a slot over the limit contributes
    nothing.
    """
    choices = []
    for token in tokens:                                                  # (d_model,)
        logits = layer.router.weight @ token                              # (E,)
        probs = logits.softmax(dim=-1)                                    # (E,)
        weights, experts = probs.topk(layer.top_k)                        # (k,), (k,)
        if layer.renormalize:
            weights = weights / weights.sum()
        choices.append(list(zip(weights, experts.tolist())))
    slots_taken = [0] * layer.num_experts
    outputs = [torch.zeros_like(token) for token in tokens]
    for rank in range(layer.top_k):                                       # first choices first
        for index, token in enumerate(tokens):
            weight, expert = choices[index][rank]
            slots_taken[expert] += 1
            if capacity is not None and slots_taken[expert] > capacity:
                continue                                                  # dropped slot
            outputs[index] = outputs[index] + weight * layer.experts[expert](token)
    for index, token in enumerate(tokens):
        for shared in layer.shared_experts:                               # always active
            outputs[index] = outputs[index] + shared(token)
    return torch.stack(outputs)                                           # (N, d_model)


def reference_balance_loss(router_logits: torch.Tensor, top_k: int) -> float:
    """``E * sum_i f_i P_i`` with plain Python counting (Switch Transformer eq. 4, top-k slots)."""
    num_tokens, num_experts = router_logits.shape
    slot_counts = [0] * num_experts
    prob_sums = [0.0] * num_experts
    for row in router_logits.tolist():
        exps = [math.exp(value) for value in row]
        probs = [value / sum(exps) for value in exps]
        for expert in sorted(range(num_experts), key=lambda e: -probs[e])[:top_k]:
            slot_counts[expert] += 1
        for expert in range(num_experts):
            prob_sums[expert] += probs[expert]
    slot_fraction = [count / (num_tokens * top_k) for count in slot_counts]   # f_i
    mean_prob = [total / num_tokens for total in prob_sums]                   # P_i
    return num_experts * sum(f * p for f, p in zip(slot_fraction, mean_prob))


def make_layer(d_model, d_ff, num_experts, top_k, seed=0, **options) -> MoELayer:
    """An MoE layer in float64 with random (not default-initialised) weights."""
    torch.manual_seed(seed)
    layer = MoELayer(d_model, d_ff, num_experts, top_k, **options).double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(0.0, 0.5)
    return layer


def gradients(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor, probe: torch.Tensor):
    """Gradients of ``sum(output * probe)`` w.r.t. the input and every parameter (by name)."""
    names, parameters = zip(*module.named_parameters())
    grads = torch.autograd.grad((output * probe).sum(), (inputs, *parameters), allow_unused=True)
    return grads[0], dict(zip(names, grads[1:]))


# ------------------------------------------------- the layer against the reference
@pytest.mark.parametrize(
    "shape, num_experts, top_k, renormalize, num_shared_experts",
    [
        ((2, 5), 4, 2, True, 0),
        ((3, 4), 8, 2, True, 0),
        ((1, 7), 5, 3, True, 0),
        ((11,), 3, 1, True, 0),
        ((2, 6), 6, 2, False, 0),
        ((9,), 4, 3, False, 0),
        ((2, 3), 4, 1, True, 2),
    ],
)
def test_moe_layer_matches_per_token_reference(shape, num_experts, top_k, renormalize, num_shared_experts):
    d_model, d_ff = 6, 10
    layer = make_layer(d_model, d_ff, num_experts, top_k, seed=sum(shape) + num_experts,
                       renormalize=renormalize, num_shared_experts=num_shared_experts, shared_d_ff=7)
    x = torch.randn(*shape, d_model, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(*shape, d_model, dtype=torch.float64)   # a random downstream loss

    output = layer(x)
    expected = reference_moe(layer, x.reshape(-1, d_model)).reshape(x.shape)

    assert output.shape == x.shape
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-12)
    input_grad, parameter_grads = gradients(layer, x, output, probe)
    expected_input_grad, expected_parameter_grads = gradients(layer, x, expected, probe)
    torch.testing.assert_close(input_grad, expected_input_grad, rtol=1e-10, atol=1e-12)
    assert parameter_grads.keys() == expected_parameter_grads.keys()
    for name, grad in parameter_grads.items():
        expected_grad = expected_parameter_grads[name]
        if expected_grad is None:   # an expert no token chose gets no gradient in either
            assert grad is None or grad.abs().max() == 0, name
        else:
            torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12, msg=name)
    assert parameter_grads["router.weight"].abs().max() > 0   # the router learns from the gate


def test_top_k_equal_to_num_experts_is_the_full_softmax_mixture():
    num_experts, d_model = 5, 6
    layer = make_layer(d_model, 8, num_experts, num_experts, seed=1)
    x = torch.randn(13, d_model, dtype=torch.float64)

    probs = (x @ layer.router.weight.T).softmax(dim=-1)                              # (N, E)
    expert_outputs = torch.stack([expert(x) for expert in layer.experts], dim=1)      # (N, E, d)
    mixture = (probs[..., None] * expert_outputs).sum(dim=1)                          # (N, d)

    torch.testing.assert_close(layer(x), mixture, rtol=1e-10, atol=1e-12)


def test_without_renormalisation_the_output_scales_by_the_chosen_probability_mass():
    num_experts, top_k, d_model = 6, 2, 5
    renormalised = make_layer(d_model, 8, num_experts, top_k, seed=2)
    switch_style = make_layer(d_model, 8, num_experts, top_k, seed=2, renormalize=False)
    x = torch.randn(10, d_model, dtype=torch.float64)

    probs = (x @ renormalised.router.weight.T).softmax(dim=-1)                        # (N, E)
    chosen_mass = probs.topk(top_k, dim=-1).values.sum(dim=-1, keepdim=True)          # (N, 1)

    assert not switch_style.renormalize
    torch.testing.assert_close(switch_style(x), reference_moe(switch_style, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(switch_style(x), chosen_mass * renormalised(x), rtol=1e-10, atol=1e-12)
    assert (chosen_mass < 1).all()


@pytest.mark.parametrize("num_experts, top_k", [(4, 1), (4, 2), (8, 3)])
def test_identical_experts_give_one_expert_for_any_router(num_experts, top_k):
    d_model = 6
    layer = make_layer(d_model, 12, num_experts, top_k, seed=3)
    for expert in layer.experts[1:]:
        expert.load_state_dict(layer.experts[0].state_dict())
    x = torch.randn(4, 5, d_model, dtype=torch.float64)
    one_expert = layer.experts[0](x)

    for router_seed in range(3):
        torch.manual_seed(100 + router_seed)
        with torch.no_grad():
            layer.router.weight.normal_(0.0, 3.0)
        torch.testing.assert_close(layer(x), one_expert, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------- auxiliary losses
@pytest.mark.parametrize("num_experts, top_k", [(4, 1), (4, 2), (4, 4), (6, 3)])
def test_load_balancing_loss_is_one_for_uniform_routing(num_experts, top_k):
    """Rows that are the E cyclic shifts of one logit vector: each expert is in
    the top k of exactly k rows (f_i = 1/E) and its mean probability is the
    mean of one softmax (P_i = 1/E), so E * sum f_i P_i = 1."""
    base = torch.linspace(2.0, -1.0, num_experts, dtype=torch.float64)               # distinct logits
    logits = torch.stack([base.roll(shift) for shift in range(num_experts)])          # (E, E)
    logits = logits.repeat(3, 1)                                                      # (3E, E)

    loss = load_balancing_loss(logits, top_k)

    assert abs(loss.item() - 1.0) < 1e-12
    assert load_balancing_loss(torch.zeros(7, num_experts, dtype=torch.float64), num_experts).item() == 1.0


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balancing_loss_rises_for_collapsed_routing(top_k):
    """All tokens prefer the same k experts: f = (1/k, ..., 1/k, 0, ...) on the
    favourites, P_i = softmax(logits)_i, so the loss is E * sum_{i<k} P_i / k,
    which grows towards E / k as the favourites take all the probability."""
    num_experts, num_tokens = 4, 10
    losses = []
    for strength in (0.5, 2.0, 8.0):
        row = [strength - 0.1 * rank for rank in range(top_k)] + [0.0] * (num_experts - top_k)
        logits = torch.tensor([row] * num_tokens, dtype=torch.float64)                # (N, E)
        exps = [math.exp(value) for value in row]
        probs = [value / sum(exps) for value in exps]
        by_hand = num_experts * sum(probs[:top_k]) / top_k

        loss = load_balancing_loss(logits, top_k).item()

        assert loss == pytest.approx(by_hand, rel=1e-12)
        losses.append(loss)
    assert 1.0 < losses[0] < losses[1] < losses[2] < num_experts / top_k
    assert losses[2] == pytest.approx(num_experts / top_k, rel=1e-2)   # near-total collapse


def test_load_balancing_loss_matches_hand_count_and_only_p_carries_gradient():
    torch.manual_seed(4)
    logits = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)

    loss = load_balancing_loss(logits, top_k=2)
    assert loss.item() == pytest.approx(reference_balance_loss(logits.detach(), 2), rel=1e-12)

    (grad,) = torch.autograd.grad(loss, logits)
    slots = torch.zeros(5, dtype=torch.float64).index_add_(
        0, logits.topk(2, dim=-1).indices.flatten(), torch.ones(40, dtype=torch.float64))
    slot_fraction = slots / 40                                                        # f, a constant
    (expected_grad,) = torch.autograd.grad(5 * (slot_fraction * logits.softmax(-1).mean(0)).sum(), logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_router_z_loss_by_hand():
    rows = [[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, -3.0, 0.5], [10.0, -10.0, 0.0, 0.0]]
    by_hand = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in rows) / len(rows)

    loss = router_z_loss(torch.tensor(rows, dtype=torch.float64))

    assert loss.item() == pytest.approx(by_hand, rel=1e-12)
    assert router_z_loss(torch.zeros(3, 4, dtype=torch.float64)).item() == pytest.approx(math.log(4) ** 2)


# ------------------------------------------------------------ capacity factor
def routed_layer(expert_of_token: list[int], num_experts: int, **options):
    """A top-1 layer and tokens such that token t goes to ``expert_of_token[t]``:
    token t is a one-hot on coordinate ``expert_of_token[t]`` and the router is
    a large multiple of the identity."""
    layer = make_layer(num_experts, 8, num_experts, 1, seed=5, **options)
    with torch.no_grad():
        layer.router.weight.copy_(10.0 * torch.eye(num_experts, dtype=torch.float64))
    tokens = torch.eye(num_experts, dtype=torch.float64)[expert_of_token]              # (N, E)
    tokens = tokens * torch.linspace(1.0, 2.0, len(expert_of_token), dtype=torch.float64)[:, None]
    return layer, tokens


def test_capacity_drops_the_slots_over_the_limit_in_token_order():
    """Top-1: every slot is a first choice, so the queue is plain token order."""
    expert_of_token = [0, 0, 1, 0, 0, 2, 0, 1]     # expert 0 gets 5 slots, 1 gets 2, 2 gets 1
    layer, tokens = routed_layer(expert_of_token, num_experts=3, capacity_factor=1.0)
    capacity = math.ceil(1.0 * 8 * 1 / 3)          # = 3 slots per expert
    assert layer.capacity(8) == capacity
    kept_tokens = [0, 1, 2, 3, 5, 7]               # the 4th and 5th slots of expert 0 are dropped

    output, stats = layer(tokens, return_routing=True)

    for token, expert in enumerate(expert_of_token):
        expected = layer.experts[expert](tokens[token]) if token in kept_tokens else torch.zeros(3, dtype=torch.float64)
        torch.testing.assert_close(output[token], expected, rtol=1e-10, atol=1e-12)
    assert stats.dropped_fraction == pytest.approx(2 / 8)
    assert stats.dropped_slots.item() == 2
    assert stats.tokens_per_expert.tolist() == [5, 2, 1]   # counted before dropping


def test_capacity_serves_first_choices_before_second_choices():
    """GShard's priority: an earlier token's *second* choice loses its slot to a later token's first choice."""
    layer = make_layer(4, 8, 4, 2, seed=8, capacity_factor=0.5)          # ceil(0.5 * 4 * 2 / 4) = 1 slot each
    assert layer.capacity(4) == 1
    tokens = torch.randn(4, 4, dtype=torch.float64)
    experts = torch.tensor([[1, 0], [0, 2], [0, 3], [2, 1]])              # (N, k): token 0 wants expert 0 second
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1]], dtype=torch.float64)
    output, dropped = layer._dispatch(tokens, weights, experts)
    expert = layer.experts
    expected = torch.stack([0.6 * expert[1](tokens[0]),                 # its 2nd choice (expert 0) dropped
                            0.7 * expert[0](tokens[1]),                 # the first first-choice of expert 0
                            0.2 * expert[3](tokens[2]),                 # expert 0 was full
                            0.9 * expert[2](tokens[3])])                # beat token 1's second choice to expert 2
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-12)
    assert int(dropped) == 4


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25])
def test_capacity_matches_reference_with_top_2(capacity_factor):
    num_experts, top_k, d_model, num_tokens = 4, 2, 6, 24
    layer = make_layer(d_model, 10, num_experts, top_k, seed=6, capacity_factor=capacity_factor)
    with torch.no_grad():   # skew the router so that some experts overflow
        layer.router.weight[0] += 0.5 * layer.router.weight[1]
    x = torch.randn(num_tokens, d_model, dtype=torch.float64)
    x[:, 0] += 1.0
    capacity = math.ceil(capacity_factor * num_tokens * top_k / num_experts)

    output, stats = layer(x, return_routing=True)

    torch.testing.assert_close(output, reference_moe(layer, x, capacity), rtol=1e-10, atol=1e-12)
    loads = stats.tokens_per_expert
    dropped_by_hand = (loads - capacity).clamp(min=0).sum().item() / (num_tokens * top_k)
    assert stats.dropped_fraction == pytest.approx(dropped_by_hand)
    if capacity_factor == 0.5:
        assert dropped_by_hand > 0


def test_large_capacity_drops_nothing_and_changes_nothing():
    num_experts, top_k, d_model = 4, 2, 6
    unlimited = make_layer(d_model, 10, num_experts, top_k, seed=7)
    roomy = make_layer(d_model, 10, num_experts, top_k, seed=7, capacity_factor=float(num_experts))
    x = torch.randn(3, 8, d_model, dtype=torch.float64)

    (roomy_out, roomy_stats), (out, stats) = roomy(x, return_routing=True), unlimited(x, return_routing=True)
    torch.testing.assert_close(roomy_out, out, rtol=0, atol=0)
    assert roomy_stats.dropped_fraction == 0.0
    assert stats.dropped_fraction == 0.0


# --------------------------------------------------------------- noisy gating
def test_noisy_gating_adds_noise_only_while_training():
    d_model, num_experts = 6, 4
    noisy = make_layer(d_model, 10, num_experts, 2, seed=8, noisy_gating=True)
    clean = make_layer(d_model, 10, num_experts, 2, seed=8)
    clean.load_state_dict({k: v for k, v in noisy.state_dict().items() if not k.startswith("router.noise")})
    x = torch.randn(20, d_model, dtype=torch.float64)

    assert isinstance(noisy.router.noise, nn.Linear)
    assert noisy.router.noise.weight.shape == (num_experts, d_model)
    assert clean.router.noise is None

    noisy.eval()
    torch.testing.assert_close(noisy(x), noisy(x), rtol=0, atol=0)
    torch.testing.assert_close(noisy(x), clean(x), rtol=0, atol=0)

    noisy.train()
    torch.manual_seed(0)
    first = noisy(x)
    second = noisy(x)
    assert (first - second).abs().max() > 1e-3
    assert (first - clean(x)).abs().max() > 1e-3


# ------------------------------------------------------------- routing stats
@pytest.mark.parametrize("num_experts, top_k", [(4, 1), (4, 2), (7, 3)])
def test_routing_stats_add_up(num_experts, top_k):
    layer = make_layer(8, 12, num_experts, top_k, seed=9)
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    num_tokens = 30

    output, stats = layer(x, return_routing=True)

    torch.testing.assert_close(output, layer(x), rtol=0, atol=0)   # the same output with or without stats
    assert stats.tokens_per_expert.shape == (num_experts,)
    assert stats.tokens_per_expert.sum().item() == num_tokens * top_k
    assert stats.load_share.sum().item() == pytest.approx(1.0)
    assert stats.mean_prob.sum().item() == pytest.approx(1.0)
    assert stats.top_k_experts.shape == (num_tokens, top_k)
    counted = torch.bincount(stats.top_k_experts.flatten(), minlength=num_experts)
    assert counted.tolist() == stats.tokens_per_expert.tolist()
    probs = (x.reshape(-1, 8) @ layer.router.weight.T).softmax(-1)
    assert stats.top1_expert.tolist() == probs.argmax(-1).tolist()
    torch.testing.assert_close(stats.mean_prob.double(), probs.mean(0).detach(), rtol=1e-6, atol=1e-7)
    balance, z = load_balancing_loss(x.reshape(-1, 8) @ layer.router.weight.T, top_k), router_z_loss(
        x.reshape(-1, 8) @ layer.router.weight.T)
    torch.testing.assert_close(stats.aux_loss, layer.aux_loss_coef * balance + layer.z_loss_coef * z)
    assert stats.aux_loss.requires_grad                              # the aux loss trains the router
    assert not stats.mean_prob.requires_grad                         # the statistics are detached
    assert not hasattr(layer, "last_stats")                          # nothing is left on the layer


def test_routing_stats_are_handed_back_per_call_not_overwritten():
    """Two forward passes give two independent statistics: the first is not overwritten."""
    layer = make_layer(8, 12, 4, 2, seed=10)
    first_x, second_x = torch.randn(5, 8, dtype=torch.float64), torch.randn(9, 8, dtype=torch.float64)
    _, first = layer(first_x, return_routing=True)
    counts = first.tokens_per_expert.clone()
    _, second = layer(second_x, return_routing=True)
    assert torch.equal(first.tokens_per_expert, counts)
    assert (first.tokens_per_expert.sum().item(), second.tokens_per_expert.sum().item()) == (10, 18)


def test_count_per_expert_matches_bincount():
    ids = torch.tensor([[3, 0], [3, 1], [0, 3]])
    assert count_per_expert(ids, 5).tolist() == torch.bincount(ids.flatten(), minlength=5).tolist()


# ------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "num_experts, top_k, capacity_factor",
    [(4, 5, None), (4, 0, None), (0, 1, None), (-2, 1, None), (4, 2, 0.0), (4, 2, -1.0)],
)
def test_bad_arguments_raise_value_error(num_experts, top_k, capacity_factor):
    with pytest.raises(ValueError):
        MoELayer(8, 16, num_experts, top_k, capacity_factor=capacity_factor)


# ------------------------------------------------------------- in the model
def test_gpt_puts_moe_layers_after_first_k_dense_and_sums_their_aux_losses():
    cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=3, n_heads=2, d_ff=24, max_seq_len=16,
                      num_experts=4, top_k=2, first_k_dense=1, aux_loss_coef=0.3, z_loss_coef=0.05)
    torch.manual_seed(10)
    model = GPT(cfg)
    ffn_inputs = []
    hooks = [block.ffn.register_forward_pre_hook(lambda module, args, kwargs: ffn_inputs.append(args[0]),
                                                 with_kwargs=True)
             for block in model.layers if block.is_moe]
    idx = torch.randint(0, 64, (2, 9))

    out = model(idx)
    for hook in hooks:
        hook.remove()

    assert isinstance(model.layers[0].ffn, FeedForward)
    assert all(isinstance(block.ffn, MoELayer) for block in model.layers[1:])
    assert len(model.moe_layers) == 2
    assert all(layer.num_experts == 4 and layer.top_k == 2 for layer in model.moe_layers)
    by_hand = 0.0
    for layer, ffn_input in zip(model.moe_layers, ffn_inputs):
        logits = ffn_input.reshape(-1, 16).double() @ layer.router.weight.double().T   # (N, E)
        z_by_hand = logits.logsumexp(dim=-1).pow(2).mean().item()
        by_hand += 0.3 * reference_balance_loss(logits, 2) + 0.05 * z_by_hand
    assert out.aux_loss.item() == pytest.approx(by_hand, rel=1e-5)

    dense = GPT(cfg.replace(num_experts=0, first_k_dense=0))
    assert dense(idx).aux_loss.item() == 0.0
    assert dense.moe_layers == []


# ----------------------------------------------------- load balancing in training
@pytest.mark.slow
def test_aux_loss_keeps_experts_balanced_in_a_short_training_run(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_COURSE_CACHE", str(tmp_path))
    from moe_helpers.data import prepare_data
    from moe_helpers.train import train_phase

    data = prepare_data("offline", vocab_size=512, limit=300, verbose=False)
    num_experts, steps = 8, 30

    def mean_max_share(use_aux_loss: bool) -> float:
        """Train a small top-1 MoE and return its largest expert share, averaged over layers."""
        cfg = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64,
                          num_experts=num_experts, top_k=1, aux_loss_coef=0.1)
        torch.manual_seed(0)
        model = GPT(cfg)
        settings = TrainConfig(steps_phase1=steps, lr_phase1=3e-3, batch_size=8, seq_len=32, log_every=steps,
                               eval_every=steps, eval_batches=2, device="cpu", seed=0)
        history = train_phase(model, data, settings, use_aux_loss=use_aux_loss, progress=False, verbose=False)
        loads = history.records[-1]["expert_load"]                       # per layer, per expert
        assert len(loads) == 2 and all(sum(load) == pytest.approx(1.0) for load in loads)
        return sum(max(load) for load in loads) / len(loads)

    collapsed = mean_max_share(use_aux_loss=False)
    balanced = mean_max_share(use_aux_loss=True)

    print(f"largest expert share, mean over layers: without aux loss {collapsed:.3f}, "
          f"with aux loss {balanced:.3f} (uniform {1 / num_experts:.3f})")
    assert balanced < collapsed - 0.2
    assert balanced < 2.5 / num_experts


# ------------------------------------------------- auxiliary-loss-free balancing
def _biased_layer(top_k: int, renormalize: bool, seed: int = 0) -> tuple[MoELayer, torch.Tensor]:
    torch.manual_seed(seed)
    layer = MoELayer(8, 16, 4, top_k, renormalize=renormalize, bias_update_rate=0.01).double()
    tokens = torch.randn(32, 8, dtype=torch.float64)
    return layer, tokens


@pytest.mark.parametrize("top_k, renormalize", [(1, False), (2, True), (2, False)])
def test_a_huge_bias_chooses_the_expert_but_the_weights_stay_unbiased(top_k, renormalize):
    """DeepSeek-V3 eq. 16: the bias enters top-k selection only, the gate uses the raw probabilities."""
    layer, tokens = _biased_layer(top_k, renormalize)
    layer.expert_bias[3] = 100.0
    probs = layer.router.logits(tokens).softmax(-1)                            # (N, E) unbiased
    weights, experts = layer.router.route(layer.router.logits(tokens), layer.expert_bias)
    assert experts[:, 0].eq(3).all(), "a huge bias must send every token to expert 3 first"
    expected = probs.gather(-1, experts)
    if renormalize:
        expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-12)
    assert weights[:, 0].lt(0.99).any(), "the weights are probabilities, not the biased scores"
    # and the layer's output is built from exactly those choices and weights
    output, stats = layer(tokens, return_routing=True)
    assert stats.tokens_per_expert[3] == tokens.shape[0]
    reference = sum(weights[:, slot, None] * torch.stack([layer.experts[e](t) for e, t in zip(experts[:, slot], tokens)])
                    for slot in range(top_k))
    torch.testing.assert_close(output, reference, rtol=0, atol=1e-12)


def test_a_zero_bias_changes_nothing():
    layer, tokens = _biased_layer(2, True)
    plain = MoELayer(8, 16, 4, 2).double()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "expert_bias"})
    torch.testing.assert_close(layer(tokens), plain(tokens), rtol=0, atol=0)


def test_the_bias_update_is_gamma_times_the_sign_of_the_load_gap():
    layer, _ = _biased_layer(1, False)
    layer.update_expert_bias(torch.tensor([10, 2, 4, 0]))                       # mean 4
    torch.testing.assert_close(layer.expert_bias, torch.tensor([-0.01, 0.01, 0.0, 0.01], dtype=torch.float64))
    assert not layer.expert_bias.requires_grad and "expert_bias" not in dict(layer.named_parameters())


def test_without_a_rate_there_is_no_bias_buffer_and_the_state_dict_is_unchanged():
    layer = MoELayer(8, 16, 4, 2)
    assert layer.expert_bias is None and "expert_bias" not in layer.state_dict()
    layer.update_expert_bias(torch.tensor([10, 2, 4, 0]))                       # a no-op
    assert "expert_bias" in MoELayer(8, 16, 4, 2, bias_update_rate=1e-3).state_dict()


def test_bias_updates_alone_balance_a_collapsed_router():
    """A frozen router that sends every token to expert 0; 300 bias steps spread the load."""
    torch.manual_seed(0)
    layer = MoELayer(8, 16, 4, 1, renormalize=False, bias_update_rate=0.01)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] = 0.5                                            # expert 0 wins for x > 0
    tokens = torch.randn(256, 8).abs() + 0.1                                    # every token prefers expert 0
    _, before = layer(tokens, return_routing=True)
    for _ in range(300):
        _, stats = layer(tokens, return_routing=True)
        layer.update_expert_bias(stats.tokens_per_expert)
    _, after = layer(tokens, return_routing=True)
    assert before.load_share.max() == 1.0
    assert after.load_share.max() < 0.40, after.load_share      # uniform would be 0.25


def test_train_phase_moves_the_bias_by_multiples_of_the_rate(tiny, tiny_preset):
    rate = 0.01
    torch.manual_seed(0)
    model = GPT(tiny_preset.model.replace(num_experts=4, top_k=2, bias_update_rate=rate))
    settings = TrainConfig(steps_phase1=5, lr_phase1=1e-3, batch_size=4, seq_len=16, warmup_steps=1,
                           log_every=5, eval_every=5, eval_batches=1, device="cpu", grad_accum=2)
    train_phase(model, tiny, settings, progress=False, verbose=False)
    for layer in model.moe_layers:
        steps_taken = layer.expert_bias / rate                                  # each step adds -1, 0 or +1
        torch.testing.assert_close(steps_taken, steps_taken.round(), rtol=0, atol=1e-4)
        assert steps_taken.abs().max() <= 5 and steps_taken.abs().max() >= 1
        assert abs(layer.expert_bias.sum()) <= 5 * rate * 4


def test_bias_update_rate_is_validated():
    with pytest.raises(ValueError, match="bias_update_rate"):
        MoELayer(8, 16, 4, 2, bias_update_rate=-0.1)
    with pytest.raises(ValueError, match="bias_update_rate"):
        ModelConfig(vocab_size=32, d_model=8, n_layers=1, n_heads=2, d_ff=16, num_experts=4, bias_update_rate=-1)
    with pytest.raises(ValueError, match="balance_loss_scope"):
        MoELayer(8, 16, 4, 2, balance_loss_scope="token")
    with pytest.raises(ValueError, match="balance_loss_scope"):
        ModelConfig(vocab_size=32, d_model=8, n_layers=1, n_heads=2, d_ff=16, num_experts=4,
                    balance_loss_scope="global")


# ---------------------------------------------- sequence-wise balance loss (DeepSeek-V3)
def test_sequence_loss_sees_what_the_batch_loss_cannot():
    """Four sequences, each sending all its tokens to its own expert: the batch is balanced
    (batch loss 1) while every sequence is collapsed (sequence loss E = 4)."""
    experts = torch.arange(4).repeat_interleave(16).reshape(4, 16)             # (B, T): sequence b -> expert b
    logits = 30.0 * nn.functional.one_hot(experts, 4).double()                 # (B, T, E), confident
    batch = load_balancing_loss(logits.reshape(-1, 4), top_k=1)
    sequence = sequence_balance_loss(logits, top_k=1)
    assert abs(batch.item() - 1.0) < 1e-9 and abs(sequence.item() - 4.0) < 1e-9


def test_sequence_loss_is_the_mean_of_per_sequence_switch_losses():
    logits = torch.randn(3, 10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    per_sequence = torch.stack([load_balancing_loss(row, 2) for row in logits]).mean()
    torch.testing.assert_close(sequence_balance_loss(logits, 2), per_sequence, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(B, T, E\)"):
        sequence_balance_loss(logits.reshape(-1, 5), 2)


def test_the_layer_uses_the_sequence_scope_when_asked():
    torch.manual_seed(0)
    layer = MoELayer(8, 16, 4, 2, balance_loss_scope="sequence", aux_loss_coef=1.0, z_loss_coef=0.0).double()
    x = torch.randn(3, 10, 8, dtype=torch.float64)                              # (B, T, d_model)
    _, stats = layer(x, return_routing=True)
    logits = layer.router.logits(x.reshape(-1, 8)).reshape(3, 10, 4)
    torch.testing.assert_close(stats.aux_loss, sequence_balance_loss(logits, 2), rtol=0, atol=1e-12)
    stats.aux_loss.backward()
    assert layer.router.weight.grad.abs().max() > 0


def test_inference_skips_idle_experts_and_computes_the_same():
    """Under no_grad an expert without tokens is not run; the output is the same as in training mode."""
    torch.manual_seed(0)
    layer = MoELayer(8, 16, 4, 1).double()
    with torch.no_grad():
        layer.router.weight[3] = -10.0                      # expert 3 never wins for these tokens
    tokens = torch.randn(16, 8, dtype=torch.float64).abs()
    calls = []
    hook = layer.experts[3].register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    with_grad = layer(tokens)
    with torch.no_grad():
        without_grad = layer(tokens)
    hook.remove()
    assert calls == [0], "called once (with 0 tokens) while training, skipped in inference"
    torch.testing.assert_close(without_grad, with_grad.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("top_k, options", [
    (1, {}), (2, {}), (3, {}), (2, dict(renormalize=False)), (2, dict(num_shared_experts=1)),
    (2, dict(bias_update_rate=0.01)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_token_in_inference_is_the_sorted_dispatch_bit_for_bit(top_k, options, dtype):
    """Generation's shortcut -- one token, no gradient: its k experts are called one by one
    instead of sorting k slots -- gives exactly the sorted dispatch's output."""
    layer = make_layer(8, 16, 5, top_k, seed=11, **options).to(dtype)
    if layer.expert_bias is not None:
        layer.expert_bias.copy_(torch.tensor([0.0, 0.3, 0.0, -0.2, 0.1]))
    shortcut_calls = []
    one_token = layer._one_token
    layer._one_token = lambda *args: shortcut_calls.append(1) or one_token(*args)
    for seed in range(20):
        token = torch.randn(1, 1, 8, dtype=dtype, generator=torch.Generator().manual_seed(seed))   # (B, T, d)
        with torch.no_grad():
            fast = layer(token)
            weights, experts = layer.router.route(layer.router.logits(token.reshape(1, 8)), layer.expert_bias)
            sorted_output, dropped = layer._dispatch(token.reshape(1, 8), weights, experts)
            for shared in layer.shared_experts:
                sorted_output = sorted_output + shared(token.reshape(1, 8))
        assert torch.equal(fast, sorted_output.reshape(1, 1, 8)) and dropped is None
    assert len(shortcut_calls) == 20


def test_the_one_token_shortcut_is_taken_only_in_inference_without_a_capacity_limit():
    layer = make_layer(8, 16, 4, 2, seed=12)
    roomy = make_layer(8, 16, 4, 2, seed=12, capacity_factor=4.0)
    calls = []
    for module in (layer, roomy):
        one_token = module._one_token
        module._one_token = lambda *args, one_token=one_token: calls.append(1) or one_token(*args)
    token = torch.randn(1, 8, dtype=torch.float64)
    layer(token)                                   # with gradients: the training path
    layer(torch.randn(2, 8, dtype=torch.float64))  # two tokens
    with torch.no_grad():
        roomy(token)                               # a capacity limit: the queue path
        assert calls == []
        torch.testing.assert_close(layer(token), roomy(token), rtol=0, atol=0)
    assert calls == [1]
