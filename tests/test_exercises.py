"""The notebooks' exercises and their checkers (``moe_helpers.exercises``).

For every registered exercise: the reference solution in ``solutions/`` is graded
correct; a stub (``raise NotImplementedError`` or ``return None``) is *not attempted
yet*; typical wrong answers are graded wrong with the specific hint for that
mistake, and no verdict gives away the reference output; a solution that raises
another exception is wrong and quoted, never raised.  And the notebooks agree
with the registry: every stub in an Exercises section is a registered exercise
with the solution's signature, and every exercise has a stub, a check cell and
a solution.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import math
import re
from pathlib import Path

import pytest
import torch

from moe_helpers import exercises
from moe_helpers.accounting import all_to_all_bytes, count_from_config, flops_per_token
from moe_helpers.exercises import CORRECT, EXERCISES, NOT_ATTEMPTED, WRONG, check, exercises_of, grade
from moe_helpers.layers import apply_rope

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def load_solutions(notebook: str):
    """The module ``solutions/<notebook>.py`` of this repository, loaded from its path."""
    path = ROOT / "solutions" / f"{notebook}.py"
    spec = importlib.util.spec_from_file_location(f"solutions_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solution(name: str):
    return getattr(load_solutions(EXERCISES[name].notebook), name)


# ------------------------------------------------------------ typical wrong answers
# 01 ---------------------------------------------------------------------------
def rms_norm_without_gain(x, gain, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rms_norm_like_layer_norm(x, gain, eps=1e-5):
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * gain


def rms_norm_eps_outside(x, gain, eps=1e-5):
    return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * gain


def rms_norm_without_eps(x, gain, eps=1e-5):
    return x / x.pow(2).mean(-1, keepdim=True).sqrt() * gain


def attention_tiling_heads(q, k, v):
    group = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1),
                                                            is_causal=True)


def attention_without_mask(q, k, v):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v


def attention_without_scale(q, k, v):
    group, T = q.shape[1] // k.shape[1], q.shape[-2]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return (q @ k.transpose(-2, -1)).masked_fill(future, float("-inf")).softmax(-1) @ v


def block_count_without_norms(cfg):
    return solution("block_parameter_count")(cfg) - 2 * cfg.d_model


def block_count_ignoring_gqa(cfg):
    d, hd = cfg.d_model, cfg.head_size
    return 4 * d * cfg.n_heads * hd + 3 * d * cfg.d_ff + 2 * d


def block_count_with_raw_fields(cfg):
    d = cfg.d_model
    return 2 * d * cfg.n_heads * cfg.head_size + 2 * d * cfg.n_kv_heads * cfg.head_size + 3 * d * cfg.d_ff + 2 * d


# 02 ---------------------------------------------------------------------------
def route_without_renormalising(router_logits, k):
    return router_logits.softmax(-1).topk(k, dim=-1)


def route_softmax_over_tokens(router_logits, k):
    values, experts = router_logits.softmax(0).topk(k, dim=-1)
    return values / values.sum(-1, keepdim=True), experts


def route_returning_experts_first(router_logits, k):
    weights, experts = solution("route_top_k")(router_logits, k)
    return experts, weights


def moe_forward_ignoring_weights(x, top_k_weights, top_k_experts, experts):
    return solution("moe_forward")(x, torch.ones_like(top_k_weights), top_k_experts, experts)


def moe_forward_token_by_token(x, top_k_weights, top_k_experts, experts):
    output = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for weight, e in zip(top_k_weights[t], top_k_experts[t].tolist()):
            output[t] += weight * experts[e](x[t])
    return output


def moe_forward_every_expert_on_every_token(x, top_k_weights, top_k_experts, experts):
    output = torch.zeros_like(x)
    for e, expert in enumerate(experts):
        gate = (top_k_weights * (top_k_experts == e)).sum(-1, keepdim=True)     # (N, 1), 0 where not chosen
        output += gate * expert(x)
    return output


def balance_loss_with_probabilities_as_f(router_logits, k):
    probs = router_logits.softmax(-1)
    return router_logits.shape[1] * (probs.mean(0) ** 2).sum()


def balance_loss_without_e(router_logits, k):
    return solution("balance_loss")(router_logits, k) / router_logits.shape[1]


def balance_loss_as_float(router_logits, k):
    return solution("balance_loss")(router_logits, k).item()


# 03 ---------------------------------------------------------------------------
def counts_router_inactive(cfg):
    total, active = solution("moe_parameter_counts")(cfg)
    return total, active - cfg.num_moe_layers * cfg.d_model * cfg.num_experts


def counts_embedding_inactive(cfg):
    total, active = solution("moe_parameter_counts")(cfg)
    return total, active - cfg.vocab_size * cfg.d_model


def counts_tied_twice(cfg):
    total, active = solution("moe_parameter_counts")(cfg)
    extra = cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0
    return total + extra, active + extra


def counts_without_final_norm(cfg):
    total, active = solution("moe_parameter_counts")(cfg)
    return total - cfg.d_model, active - cfg.d_model


def flops_with_embedding(cfg, seq_len):
    return solution("forward_flops_per_token")(cfg, seq_len) + 2 * cfg.vocab_size * cfg.d_model


def flops_of_every_expert(cfg, seq_len):
    total, active = count_from_config(cfg).total, count_from_config(cfg).active
    return solution("forward_flops_per_token")(cfg, seq_len) + 2 * (total - active)


def memory_of_active_parameters(cfg, bytes_per_value):
    return count_from_config(cfg).active * (2 * bytes_per_value + 8)


def memory_with_moments_at_weight_precision(cfg, bytes_per_value):
    return count_from_config(cfg).total * 4 * bytes_per_value


# 04 ---------------------------------------------------------------------------
def upcycle_with_zero_router(dense_state, num_experts, router_std=0.02, generator=None):
    state = solution("upcycle_state_dict")(dense_state, num_experts, router_std, generator)
    return {name: torch.zeros_like(t) if name.endswith("router.weight") else t for name, t in state.items()}


def upcycle_averaging_experts(dense_state, num_experts, router_std=0.02, generator=None):
    state = solution("upcycle_state_dict")(dense_state, num_experts, router_std, generator)
    return {name: t / num_experts if ".experts." in name else t for name, t in state.items()}


def upcycle_first_block_only(dense_state, num_experts, router_std=0.02, generator=None):
    state = solution("upcycle_state_dict")(dense_state, num_experts, router_std, generator)
    return {name: t for name, t in state.items() if ".ffn." not in name or name.startswith("layers.0.")}


def upcycle_ignoring_generator(dense_state, num_experts, router_std=0.02, generator=None):
    return solution("upcycle_state_dict")(dense_state, num_experts, router_std, None)


def chosen_mass_renormalised(router_logits, k):
    weights, _ = solution("route_top_k")(router_logits, k)
    return weights.sum(-1)


def chosen_mass_of_logits(router_logits, k):
    return router_logits.topk(k, -1).values.sum(-1)


# 05 ---------------------------------------------------------------------------
def widen_without_dividing(ffn, factor):
    wide = solution("widen_ffn")(ffn, factor)
    with torch.no_grad():
        for weight in (wide.w1.weight, wide.w3.weight, wide.w2.weight):
            weight.mul_(factor)
    return wide


def identity_copy_in_place(block):
    with torch.no_grad():
        for name, param in block.named_parameters():
            if name.endswith(("attention.wo.weight", "w2.weight")):
                param.zero_()
    return block


def identity_copy_attention_only(block):
    new = copy.deepcopy(block)
    with torch.no_grad():
        new.attention.wo.weight.zero_()
    return new


def identity_copy_dense_only(block):
    new = copy.deepcopy(block)
    with torch.no_grad():
        new.attention.wo.weight.zero_()
        new.ffn.w2.weight.zero_()
    return new


def identity_copy_zero_norms(block):
    new = copy.deepcopy(block)
    with torch.no_grad():
        new.attention_norm.weight.zero_()
        new.ffn_norm.weight.zero_()
    return new


def split_rescaling_w2(ffn, parts):
    pieces = solution("split_ffn")(ffn, parts)
    with torch.no_grad():
        for piece in pieces:
            piece.w2.weight.mul_(parts)
    return pieces


def split_w2_by_rows(ffn, parts):
    from moe_helpers.layers import FeedForward
    d_ff, d_model = ffn.w1.weight.shape
    pieces = []
    for w1, w3, w2 in zip(ffn.w1.weight.chunk(parts), ffn.w3.weight.chunk(parts), ffn.w2.weight.chunk(parts)):
        piece = FeedForward(d_model, d_ff // parts)
        with torch.no_grad():
            piece.w1.weight.copy_(w1), piece.w3.weight.copy_(w3), piece.w2.weight.copy_(w2)
        pieces.append(piece)
    return pieces


# 06 ---------------------------------------------------------------------------
def jump_before_minus_after(before, after, idx, targets, tolerance=1e-3):
    jump, ok = solution("transition_jump")(before, after, idx, targets, tolerance)
    return -jump, ok


def jump_in_training_mode(before, after, idx, targets, tolerance=1e-3):
    with torch.no_grad():
        jump = after(idx, targets).loss.item() - before(idx, targets).loss.item()
    return jump, abs(jump) < tolerance


def jump_without_abs(before, after, idx, targets, tolerance=1e-3):
    jump, _ = solution("transition_jump")(before, after, idx, targets, tolerance)
    return jump, jump < tolerance


def jump_with_aux_loss(before, after, idx, targets, tolerance=1e-3):
    before.eval(), after.eval()
    with torch.no_grad():
        out_before, out_after = before(idx, targets), after(idx, targets)
    jump = (out_after.loss + out_after.aux_loss - out_before.loss - out_before.aux_loss).item()
    return jump, abs(jump) < tolerance


def jump_leaving_eval_mode(before, after, idx, targets, tolerance=1e-3):
    before.eval(), after.eval()
    with torch.no_grad():
        jump = after(idx, targets).loss.item() - before(idx, targets).loss.item()
    return jump, abs(jump) < tolerance


def load_share_without_minlength(top_k_experts, num_experts):
    return torch.bincount(top_k_experts.flatten()).float() / top_k_experts.numel()


def load_share_per_token(top_k_experts, num_experts):
    return torch.bincount(top_k_experts.flatten(), minlength=num_experts).float() / top_k_experts.shape[0]



# 07 ---------------------------------------------------------------------------
def kv_bytes_of_query_heads(cfg, batch_size, seq_len, bytes_per_value):
    positions = min(seq_len, cfg.max_seq_len)
    return 2 * cfg.n_layers * batch_size * cfg.n_heads * cfg.head_size * positions * bytes_per_value


def kv_bytes_without_window(cfg, batch_size, seq_len, bytes_per_value):
    return 2 * cfg.n_layers * batch_size * cfg.kv_heads * cfg.head_size * seq_len * bytes_per_value


def kv_bytes_of_keys_only(cfg, batch_size, seq_len, bytes_per_value):
    return solution("kv_cache_bytes_by_hand")(cfg, batch_size, seq_len, bytes_per_value) // 2


def kv_bytes_with_d_model_over_heads(cfg, batch_size, seq_len, bytes_per_value):
    positions = min(seq_len, cfg.max_seq_len)
    head_dim = cfg.d_model // cfg.n_heads
    return 2 * cfg.n_layers * batch_size * cfg.kv_heads * head_dim * positions * bytes_per_value


def attend_by_hand(attention, x_new, past_keys, past_values, key_shift=0, rotate_query=True, tile=False,
                   causal=False, rotate_values=False):
    """The solution's steps, each keyword a typical mistake."""
    B, T = x_new.shape[0], past_keys.shape[2]
    H, H_kv, hd = attention.n_heads, attention.n_kv_heads, attention.head_dim
    cos, sin = attention.rope_cos, attention.rope_sin
    q = attention.wq(x_new).view(B, 1, H, hd).transpose(1, 2)
    k = attention.wk(x_new).view(B, 1, H_kv, hd).transpose(1, 2)
    v = attention.wv(x_new).view(B, 1, H_kv, hd).transpose(1, 2)
    if rotate_query:
        q = apply_rope(q, cos[T:T + 1], sin[T:T + 1])
    k = apply_rope(k, cos[T + key_shift:T + key_shift + 1], sin[T + key_shift:T + key_shift + 1])
    if rotate_values:
        v = apply_rope(v, cos[T:T + 1], sin[T:T + 1])
    keys, values = torch.cat([past_keys, k], dim=2), torch.cat([past_values, v], dim=2)
    group = H // H_kv
    expand = (lambda t: t.repeat(1, group, 1, 1)) if tile else (lambda t: t.repeat_interleave(group, dim=1))
    out = torch.nn.functional.scaled_dot_product_attention(q, expand(keys), expand(values), is_causal=causal)
    return attention.wo(out.transpose(1, 2).reshape(B, 1, H * hd)), keys, values


def attend_rotating_key_at_previous_position(attention, x_new, past_keys, past_values):
    return attend_by_hand(attention, x_new, past_keys, past_values, key_shift=-1)


def attend_without_rotating_query(attention, x_new, past_keys, past_values):
    return attend_by_hand(attention, x_new, past_keys, past_values, rotate_query=False)


def attend_tiling_heads(attention, x_new, past_keys, past_values):
    return attend_by_hand(attention, x_new, past_keys, past_values, tile=True)


def attend_with_causal_mask(attention, x_new, past_keys, past_values):
    return attend_by_hand(attention, x_new, past_keys, past_values, causal=True)


def attend_rotating_values(attention, x_new, past_keys, past_values):
    return attend_by_hand(attention, x_new, past_keys, past_values, rotate_values=True)


def attend_returning_repeated_heads(attention, x_new, past_keys, past_values):
    output, keys, values = solution("attend_with_cache")(attention, x_new, past_keys, past_values)
    group = attention.n_heads // attention.n_kv_heads
    return output, keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)


@torch.no_grad()
def greedy_without_cache(model, prompt, new_tokens):
    idx = prompt
    for _ in range(new_tokens):
        logits = model(idx[:, -model.cfg.max_seq_len:]).logits[:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


@torch.no_grad()
def greedy_feeding_the_whole_text(model, prompt, new_tokens):
    cache, idx = model.new_kv_cache(), prompt
    for _ in range(new_tokens):
        logits = model(idx, cache=cache).logits[:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


@torch.no_grad()
def greedy_with_a_fresh_cache_each_step(model, prompt, new_tokens):
    idx, pending = prompt, prompt
    for _ in range(new_tokens):
        pending = model(pending, cache=model.new_kv_cache()).logits[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, pending], dim=1)
    return idx


def greedy_returning_new_tokens_only(model, prompt, new_tokens):
    return solution("greedy_generate")(model, prompt, new_tokens)[:, prompt.shape[1]:]


@torch.no_grad()
def greedy_picking_before_the_loop(model, prompt, new_tokens):
    cache = model.new_kv_cache()
    pending = model(prompt, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
    idx = torch.cat([prompt, pending], dim=1)
    for _ in range(new_tokens - 1):
        pending = model(pending, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, pending], dim=1)
    return idx


# 08 ---------------------------------------------------------------------------
def bytes_dispatch_only(send_matrix, d_model, bytes_per_value):
    return solution("bytes_sent")(send_matrix, d_model, bytes_per_value) // 2


def bytes_with_the_diagonal(send_matrix, d_model, bytes_per_value):
    return 2 * int(send_matrix.sum()) * d_model * bytes_per_value


def bytes_of_uniform_routing(send_matrix, d_model, bytes_per_value):
    return all_to_all_bytes(int(send_matrix.sum()), 1, d_model, bytes_per_value, send_matrix.shape[0])


def rank_round_robin(expert, num_experts, ranks):
    return expert % ranks


def rank_dividing_by_ranks(expert, num_experts, ranks):
    return expert // ranks


def rank_from_one(expert, num_experts, ranks):
    return expert // (num_experts // ranks) + 1


def limit_at_eight_ranks(tokens, top_k, d_model, bytes_per_value):
    return all_to_all_bytes(tokens, top_k, d_model, bytes_per_value, 8) / 1e6


def limit_one_way(tokens, top_k, d_model, bytes_per_value):
    return tokens * top_k * d_model * bytes_per_value / 1e6


def limit_in_mebibytes(tokens, top_k, d_model, bytes_per_value):
    return 2 * tokens * top_k * d_model * bytes_per_value / 2**20

# exercise -> [(wrong answer, a phrase its hint must contain)]
WRONG_ANSWERS = {
    "rms_norm": [(rms_norm_without_gain, "forget `* gain`"), (rms_norm_like_layer_norm, "does not subtract the mean"),
                 (rms_norm_eps_outside, "inside the square root"), (rms_norm_without_eps, "eps inside")],
    "causal_gqa_attention": [(attention_tiling_heads, "don't tile"), (attention_without_mask, "mask the scores"),
                             (attention_without_scale, "1 / sqrt(head_dim)")],
    "block_parameter_count": [(block_count_without_norms, "two RMSNorm gains"),
                              (block_count_ignoring_gqa, "kv_heads * head_size"),
                              (block_count_with_raw_fields, "cfg.kv_heads")],
    "route_top_k": [(route_without_renormalising, "renormalise over the top-k only"),
                    (route_softmax_over_tokens, "dim=-1"), (route_returning_experts_first, "weights first")],
    "moe_forward": [(moe_forward_ignoring_weights, "gate weight"), (moe_forward_token_by_token, "run it once"),
                    (moe_forward_every_expert_on_every_token, "only on the tokens that chose it")],
    "balance_loss": [(balance_loss_with_probabilities_as_f, "counts token slots"),
                     (balance_loss_without_e, "multiply by E"), (balance_loss_as_float, "gradient")],
    "moe_parameter_counts": [(counts_router_inactive, "count it as active"),
                             (counts_embedding_inactive, "input embedding as active"),
                             (counts_tied_twice, "count it once"), (counts_without_final_norm, "final norm")],
    "forward_flops_per_token": [(flops_with_embedding, "table lookup"), (flops_of_every_expert, "k of the E")],
    "training_memory_bytes": [(memory_of_active_parameters, "follows the *total*"),
                              (memory_with_moments_at_weight_precision, "float32 (4 bytes each)")],
    "upcycle_state_dict": [(upcycle_with_zero_router, "at random"), (upcycle_averaging_experts, "no scaling"),
                           (upcycle_first_block_only, "layers.<i>.ffn.experts"),
                           (upcycle_ignoring_generator, "`generator`")],
    "chosen_mass": [(chosen_mass_renormalised, "renormalised case"), (chosen_mass_of_logits, "softmax first")],
    "widen_ffn": [(widen_without_dividing, "divided by the factor")],
    "identity_copy": [(identity_copy_in_place, "copy.deepcopy"), (identity_copy_attention_only, "zero its down"),
                      (identity_copy_dense_only, "one w2 per expert"), (identity_copy_zero_norms, "zero only")],
    "split_ffn": [(split_rescaling_w2, "no rescaling"), (split_w2_by_rows, "*columns*")],
    "transition_jump": [(jump_before_minus_after, "loss after - loss before"), (jump_in_training_mode, "eval mode"),
                        (jump_without_abs, "*drop*"), (jump_with_aux_loss, "aux loss"),
                        (jump_leaving_eval_mode, "mode it was in")],
    "expert_load_share": [(load_share_without_minlength, "minlength"), (load_share_per_token, "sum to 1")],
    "kv_cache_bytes_by_hand": [(kv_bytes_of_query_heads, "not one per query head"), (kv_bytes_without_window, "slides"),
                               (kv_bytes_of_keys_only, "*and* values"),
                               (kv_bytes_with_d_model_over_heads, "d_model / n_heads")],
    "attend_with_cache": [(attend_rotating_key_at_previous_position, "its own position"),
                          (attend_without_rotating_query, "rotate the query"), (attend_tiling_heads, "don't tile"),
                          (attend_with_causal_mask, "no causal mask"), (attend_rotating_values, "never rotated"),
                          (attend_returning_repeated_heads, "not in what you return")],
    "greedy_generate": [(greedy_without_cache, "re-read the text"), (greedy_feeding_the_whole_text, "token just picked"),
                        (greedy_with_a_fresh_cache_each_step, "one cache before the loop"),
                        (greedy_returning_new_tokens_only, "prompt followed by"),
                        (greedy_picking_before_the_loop, "new_tokens = 0")],
    "bytes_sent": [(bytes_dispatch_only, "dispatch and combine"), (bytes_with_the_diagonal, "diagonal never leaves"),
                   (bytes_of_uniform_routing, "uniform routing")],
    "rank_of_expert": [(rank_round_robin, "round-robin"), (rank_dividing_by_ranks, "not by the number of ranks"),
                       (rank_from_one, "numbered from 0")],
    "all_to_all_limit_mb": [(limit_at_eight_ranks, "1 - 1/ranks tend"), (limit_one_way, "travels twice"),
                            (limit_in_mebibytes, "not 2^20")],
}
WRONG_CASES = [(name, wrong, phrase) for name, answers in WRONG_ANSWERS.items() for wrong, phrase in answers]

# A number the learner could copy: four digits or more, or three decimals or more.
REVEALING_NUMBER = re.compile(r"\d{4,}|\d\.\d{3,}")


# ------------------------------------------------------------------- the verdicts
@pytest.mark.parametrize("name", list(EXERCISES))
def test_reference_solution_is_correct(name):
    result = grade(name, solution(name))
    assert result.status == CORRECT, str(result)
    assert result.passed and str(result).startswith("✓")


@pytest.mark.parametrize("name", list(EXERCISES))
def test_stub_is_not_attempted(name):
    def raises(*args):
        raise NotImplementedError  # your code here

    def returns_none(*args):
        pass

    for stub in (raises, returns_none):
        result = grade(name, stub)
        assert result.status == NOT_ATTEMPTED, str(result)
        assert "not attempted yet" in str(result)


@pytest.mark.parametrize("name", list(EXERCISES))
def test_another_exception_is_wrong_and_quoted(name):
    def buggy(*args):
        raise ValueError("boom")

    result = grade(name, buggy)
    assert result.status == WRONG
    assert "ValueError: boom" in result.message


def test_every_exercise_has_a_typical_wrong_answer():
    assert set(WRONG_ANSWERS) == set(EXERCISES)


@pytest.mark.parametrize("name, wrong, phrase", WRONG_CASES, ids=[f"{n}-{w.__name__}" for n, w, _ in WRONG_CASES])
def test_typical_wrong_answer_gets_its_hint(name, wrong, phrase):
    result = grade(name, wrong)
    assert result.status == WRONG, str(result)
    assert phrase in result.hint or phrase in result.message, str(result)
    assert not REVEALING_NUMBER.search(result.message + result.hint), str(result)


def test_no_verdict_names_a_reference_count():
    """The parameter, FLOP and byte counts of the hidden configs never appear in a verdict."""
    references = set()
    for _, cfg in exercises._accounting_configs():
        counts = count_from_config(cfg)
        references |= {counts.total, counts.active, int(flops_per_token(cfg, 128).forward)}
        references |= {exercises._block_parameters(cfg)} if not cfg.is_moe else set()
    texts = [str(grade(name, wrong)) for name, wrong, _ in WRONG_CASES
             if EXERCISES[name].notebook in ("01_dense_model", "03_parameter_accounting")]
    for text in texts:
        for value in references:
            assert str(value) not in text and f"{value:,}" not in text, text


def test_the_mistake_formulas_start_from_the_reference():
    """Typical mistakes are recognised by formulas that, without a mistake, are the course's."""
    for _, cfg in exercises._accounting_configs():
        counts = count_from_config(cfg)
        assert exercises._count_with(cfg) == (counts.total, counts.active)
        assert exercises._flops_with(cfg, 96) == flops_per_token(cfg, 96).forward


def test_a_wrong_type_is_wrong_not_a_crash():
    assert grade("route_top_k", lambda logits, k: "weights").status == WRONG
    assert grade("rms_norm", lambda x, gain, eps: object()).status == WRONG
    assert grade("moe_parameter_counts", lambda cfg: {"total": 1}).status == WRONG


def test_check_prints_the_verdict(capsys):
    def route_top_k(router_logits, k):
        raise NotImplementedError  # your code here

    assert check("route_top_k", route_top_k) is None
    assert "not attempted yet" in capsys.readouterr().out
    check("route_top_k", route_without_renormalising)
    out = capsys.readouterr().out
    assert out.startswith("✗ route_top_k: wrong") and "hint:" in out


def test_grading_leaves_the_random_state_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    grade("upcycle_state_dict", solution("upcycle_state_dict"))
    assert torch.equal(torch.get_rng_state(), state)


def test_unknown_exercise_and_non_function():
    with pytest.raises(KeyError, match="no exercise named"):
        grade("no_such_exercise", print)
    assert grade("rms_norm", None).status == WRONG


# -------------------------------------------------- the notebooks and the registry
def exercise_stubs(path: Path) -> tuple[dict, list]:
    """The stub functions (name -> argument names) and the names passed to ``check`` in the
    Exercises section of a notebook's py:percent file."""
    text = path.read_text()
    section = text[re.search(r"^# ## (\d+\. )?Exercises", text, re.MULTILINE).start():]
    code = "\n".join(line for line in section.splitlines() if not line.startswith("# %%"))
    stubs, checked = {}, []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(n, ast.Raise) and "NotImplementedError" in ast.unparse(n) for n in ast.walk(node)):
            stubs[node.name] = [a.arg for a in node.args.args]
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "check":
            checked.append((node.args[0].value, ast.unparse(node.args[1])))
    return stubs, checked


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stubs_are_registered_exercises(path):
    stubs, checked = exercise_stubs(path)
    notebook = path.stem
    assert 2 <= len(stubs) <= 3, f"{path.name}: expected 2-3 exercise stubs, found {sorted(stubs)}"
    assert list(stubs) == exercises_of(notebook), f"{path.name}: stubs and registry disagree"
    assert checked == [(name, name) for name in stubs], f"{path.name}: each stub needs check('name', name)"
    solutions = load_solutions(notebook)
    for name, arguments in stubs.items():
        assert EXERCISES[name].notebook == notebook
        assert arguments == list(inspect.signature(getattr(solutions, name)).parameters), \
            f"{name}: the stub's arguments differ from the solution's"


def test_every_exercise_has_a_notebook_and_a_solution():
    notebooks = {path.stem for path in NOTEBOOKS}
    for name, exercise in EXERCISES.items():
        assert exercise.notebook in notebooks
        assert callable(getattr(load_solutions(exercise.notebook), name, None)), f"no solution for {name}"
    for path in (ROOT / "solutions").glob("*.py"):
        assert path.stem in notebooks, f"solutions/{path.name} belongs to no notebook"
        assert load_solutions(path.stem).__doc__, f"solutions/{path.name} has no module docstring"
