"""Exercises with checkers: you implement a piece of a chapter, ``check`` grades it.

Each notebook ends with two or three exercises.  An exercise is a stub function
that you fill in; ``check(name, fn)`` runs your function on hidden test cases
(made here from fixed seeds, edge cases included: ties, k = 1, an expert that
receives no tokens, ...) and compares it with the course's own implementation
(``moe_helpers.layers``, ``moe``, ``model``, ``accounting``, ``growth``,
``parallel``) to a stated tolerance.  It answers with one of three verdicts:

* **not attempted yet**: the stub still raises ``NotImplementedError`` (or returns ``None``);
* **correct**;
* **wrong**, with a hint that points at the mistake without giving the answer.
  Typical mistakes (no renormalisation, softmax over the wrong dimension, a
  forgotten norm gain, an off-by-one parameter count, ...) are recognised and
  named.  An exception raised by your function is reported as wrong, with its
  message; it never stops the notebook.

``grade(name, fn)`` returns the verdict as a ``CheckResult``; ``check`` prints it.
The checks never print the reference answer.  Reference solutions are in
``solutions/`` at the root of the repository (try first!).

    >>> def route_top_k(router_logits, k):
    ...     raise NotImplementedError  # your code here
    >>> check("route_top_k", route_top_k)
    … route_top_k: not attempted yet. Replace `raise NotImplementedError` with your code, then run this cell again.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .accounting import all_to_all_bytes, count_from_config, flops_per_token, kv_cache_bytes, memory_bytes
from .config import ModelConfig, preset
from .growth import grow, preservation_report, upcycle, widen_linear
from .layers import Attention, FeedForward, LayerKVCache, RMSNorm, apply_rope
from .model import GPT, Block
from .moe import Router, count_per_expert, load_balancing_loss
from .parallel import ExpertParallelRoutingStats
from .real_models import published_model

NOT_ATTEMPTED, CORRECT, WRONG = "not attempted yet", "correct", "wrong"


# --------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class CheckResult:
    """The verdict on one exercise: ``status`` is ``NOT_ATTEMPTED``, ``CORRECT`` or ``WRONG``."""

    exercise: str
    status: str
    message: str
    hint: str = ""

    @property
    def passed(self) -> bool:
        return self.status == CORRECT

    def __str__(self) -> str:
        mark = {CORRECT: "✓", NOT_ATTEMPTED: "…", WRONG: "✗"}[self.status]
        text = f"{mark} {self.exercise}: {self.status}. {self.message}"
        return text + (f"\n  hint: {self.hint}" if self.hint else "")


class _NotAttempted(Exception):
    """The learner's function is still a stub."""


class _Mistake(Exception):
    """The learner's function gave a wrong answer: what is wrong, and a hint."""

    def __init__(self, problem: str, hint: str = ""):
        super().__init__(problem)
        self.problem, self.hint = problem, hint


@dataclass(frozen=True)
class Exercise:
    """One registered exercise: its notebook, a one-line task and the function that checks it."""

    name: str
    notebook: str                                  # e.g. "02_expert_routing"
    task: str
    run: Callable                                  # run(learner) -> note on success; raises _Mistake
    error_hint: Callable[[Exception], str] | None = None   # a hint for an exception the learner's code raised


_REGISTRY: dict[str, Exercise] = {}


def _exercise(notebook: str, task: str, error_hint: Callable[[Exception], str] | None = None):
    """Register ``_check_<name>`` as the checker of exercise ``<name>``."""
    def register(run):
        name = run.__name__.removeprefix("_check_")
        _REGISTRY[name] = Exercise(name, notebook, task, run, error_hint)
        return run
    return register


class _Learner:
    """Calls the learner's function and turns its failures into verdicts.

    ``NotImplementedError`` means *not attempted*; so does ``None`` from the very
    first call (a stub that only has ``pass`` or ``...``).  Any other exception is
    a mistake that quotes the exception."""

    def __init__(self, exercise: Exercise, fn: Callable):
        self.exercise, self.fn, self.answered = exercise, fn, False

    def __call__(self, case: str, *args):
        try:
            out = self.fn(*args)
        except NotImplementedError:
            # a plain stub says nothing more; a half-finished function is told where it stopped
            raise _NotAttempted(f"It still raises NotImplementedError in {case}." if self.answered else "") from None
        except Exception as error:   # the learner's bug, reported rather than raised
            hint = self.exercise.error_hint(error) if self.exercise.error_hint else ""
            raise _Mistake(f"{case}: your function raised {type(error).__name__}: {error}", hint) from None
        if out is None:
            if not self.answered:
                raise _NotAttempted("")
            raise _Mistake(f"{case}: your function returned None.", "is a `return` missing on some path?")
        self.answered = True
        return out


# ---------------------------------------------------------------- the API
EXERCISES = MappingProxyType(_REGISTRY)    # name -> Exercise, read-only


def exercises_of(notebook: str) -> list[str]:
    """Names of the exercises of one notebook (e.g. ``"02_expert_routing"``), in order."""
    return [name for name, exercise in EXERCISES.items() if exercise.notebook == notebook]


def grade(name: str, fn: Callable) -> CheckResult:
    """Run exercise ``name``'s hidden cases on ``fn`` and return the verdict (prints nothing).

    The checks run inside ``torch.random.fork_rng``, seeded: the random numbers your
    function draws are reproducible, and the notebook's random state is left as it was."""
    if name not in EXERCISES:
        raise KeyError(f"no exercise named {name!r}; the exercises are {', '.join(EXERCISES)}")
    exercise = EXERCISES[name]
    if not callable(fn):
        return CheckResult(name, WRONG, f"check expects your function itself, as in check({name!r}, {name}).")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            note = exercise.run(_Learner(exercise, fn))
        except _NotAttempted as stub:
            return CheckResult(name, NOT_ATTEMPTED, " ".join(filter(None, (
                str(stub), "Replace `raise NotImplementedError` with your code, then run this cell again."))))
        except _Mistake as mistake:
            return CheckResult(name, WRONG, mistake.problem, mistake.hint)
        except Exception as error:   # an answer of a shape or type the comparison could not handle
            return CheckResult(name, WRONG, f"your answer could not be checked ({type(error).__name__}: {error}).",
                               "read the task again for the type and shape of what to return")
    return CheckResult(name, CORRECT, note)


def check(name: str, fn: Callable) -> None:
    """Grade ``fn`` as exercise ``name`` and print the verdict (never raises for a wrong answer)."""
    print(grade(name, fn))


# ------------------------------------------------------------- comparison tools
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tensor(value, case: str, what: str = "the result") -> torch.Tensor:
    """The learner's ``value`` as a detached tensor (lists and NumPy arrays are accepted)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except Exception:
        raise _Mistake(f"{case}: {what} should be a tensor, got {type(value).__name__}.") from None


def _require_shape(value: torch.Tensor, shape, case: str, what: str = "the result", hint: str = "") -> None:
    if tuple(value.shape) != tuple(shape):
        raise _Mistake(f"{case}: {what} has shape {tuple(value.shape)}, expected {tuple(shape)}.", hint)


def _close(answer, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Same shape and equal within the tolerance (a NaN is never close)."""
    answer = answer.detach() if isinstance(answer, torch.Tensor) else torch.as_tensor(answer)
    if tuple(answer.shape) != tuple(expected.shape):
        return False
    # compared on the CPU in float64 (a learner's tensors may sit on an MPS device, which has no float64)
    return bool(torch.allclose(answer.cpu().double(), expected.detach().cpu().double(), rtol=rtol, atol=atol))


def _diagnose(answer, variants, default: str, rtol: float = 1e-5, atol: float = 1e-6) -> str:
    """The hint of the first typical mistake ``(hint, compute)`` whose output ``answer`` matches."""
    for hint, compute in variants:
        try:
            wrong = compute()
        except Exception:
            continue
        if _close(answer, torch.as_tensor(wrong), rtol, atol):
            return hint
    return default


def _number(value, case: str, what: str = "the result") -> float:
    """The learner's scalar answer as a float (an int, a float or a one-element tensor)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Mistake(f"{case}: {what} should be a number, got {type(value).__name__}.")
    return value


def _labels(descriptions: list[str]) -> list[str]:
    return [f"case {i} of {len(descriptions)} ({text})" for i, text in enumerate(descriptions, start=1)]


def _state_copy(module: nn.Module) -> dict:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _same_state(module: nn.Module, state: dict) -> bool:
    now = module.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[name], state[name]) for name in state)


def _randomise(module: nn.Module, generator: torch.Generator, std: float = 0.3) -> nn.Module:
    """Fill every parameter with N(0, std) draws of ``generator`` (norm gains around 1)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=generator) * std
            param.copy_(1.0 + values if "norm" in name else values)
    return module


# ============================================================ 01 · the dense model
def _rms_norm_reference(x, gain, eps):
    norm = RMSNorm(x.shape[-1], eps)
    with torch.no_grad():
        norm.weight.copy_(gain)
    return norm(x).detach()


@_exercise("01_dense_model", "rms_norm(x, gain, eps): x / sqrt(mean(x^2) + eps) * gain over the last dimension")
def _check_rms_norm(learner) -> str:
    g = _generator(101)
    descriptions = ["a (2, 5, 16) batch with random gains", "the vector [3, 4] with gain 1",
                    "a batch with an all-zero vector", "small inputs (|x| about 1e-3), where eps matters",
                    "eps = 0.1"]
    zero_row = torch.randn(3, 8, generator=g)
    zero_row[1] = 0.0
    cases = [
        (torch.randn(2, 5, 16, generator=g), torch.rand(16, generator=g) + 0.5, 1e-5),
        (torch.tensor([[3.0, 4.0]]), torch.ones(2), 1e-5),
        (zero_row, torch.rand(8, generator=g) + 0.5, 1e-5),
        (1e-3 * torch.randn(4, 12, generator=g), torch.rand(12, generator=g) + 0.5, 1e-5),
        (torch.randn(3, 6, generator=g), torch.rand(6, generator=g) + 0.5, 0.1),
    ]
    for label, (x, gain, eps) in zip(_labels(descriptions), cases):
        expected = _rms_norm_reference(x, gain, eps)                          # (..., d)
        answer = _tensor(learner(label, x.clone(), gain.clone(), eps), label)
        _require_shape(answer, x.shape, label, hint="normalise each vector on its own: the output has x's shape")
        if torch.isnan(answer).any():
            raise _Mistake(f"{label}: your output contains NaN.",
                           "an all-zero vector has RMS 0: eps inside the square root keeps the division finite")
        if _close(answer, expected):
            continue
        ms = x.pow(2).mean(-1, keepdim=True)                                  # (..., 1)
        variants = [
            ("the learned gain multiplies the normalised vector: did you forget `* gain`?",
             lambda: x * torch.rsqrt(ms + eps)),
            ("RMSNorm does not subtract the mean (that is LayerNorm): divide x by its root mean square",
             lambda: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * gain),
            ("RMSNorm does not subtract the mean (that is LayerNorm): divide x by its root mean square",
             lambda: x / (x.std(-1, keepdim=True) + eps) * gain),
            ("root *mean* square: average the squares over the last dimension, don't sum them",
             lambda: x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps) * gain),
            ("root *mean* square: average the squares over the last dimension, don't sum them",
             lambda: x / (x.norm(dim=-1, keepdim=True) + eps) * gain),
            ("eps goes inside the square root: sqrt(mean(x^2) + eps)",
             lambda: x / (ms.sqrt() + eps) * gain),
            ("divide by the *root* of the mean square (a square root is missing)",
             lambda: x / (ms + eps) * gain),
            ("use the `eps` argument rather than a fixed 1e-5",
             lambda: x * torch.rsqrt(ms + 1e-5) * gain),
            ("each vector is normalised over its own last dimension (dim=-1), not over the batch",
             lambda: x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps) * gain),
            ("each vector is normalised over its own last dimension (dim=-1), not over all entries",
             lambda: x * torch.rsqrt(x.pow(2).mean() + eps) * gain),
        ]
        hint = _diagnose(answer, variants, "y = x / sqrt(mean(x^2 over the last dimension) + eps) * gain")
        raise _Mistake(f"{label}: your output differs from moe_helpers.layers.RMSNorm.", hint)
    return f"{len(cases)} hidden cases agree with moe_helpers.layers.RMSNorm (tolerance 1e-5)."


def _attention_reference(q, k, v):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)   # (B, H, T, hd)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _attention_error_hint(error: Exception) -> str:
    if "must match" in str(error) or "size of tensor" in str(error):
        return "k and v have n_kv_heads heads: repeat each one n_heads // n_kv_heads times along dim 1 first"
    return ""


@_exercise("01_dense_model", "causal_gqa_attention(q, k, v): causal softmax(q k^T / sqrt(hd)) v with "
           "grouped-query heads", _attention_error_hint)
def _check_causal_gqa_attention(learner) -> str:
    g = _generator(102)
    shapes = [  # (B, H, H_kv, T, hd)
        (2, 4, 2, 6, 8), (1, 3, 3, 5, 4), (2, 4, 1, 7, 8), (1, 6, 2, 9, 4), (1, 2, 1, 1, 4)]
    descriptions = ["4 query heads sharing 2 key/value heads", "ordinary multi-head: n_kv_heads = n_heads",
                    "one key/value head for all (multi-query)", "6 query heads, 2 key/value heads, 9 tokens",
                    "a single token"]
    for label, (B, H, H_kv, T, hd) in zip(_labels(descriptions), shapes):
        q = torch.randn(B, H, T, hd, generator=g)                             # (B, H, T, hd)
        k = torch.randn(B, H_kv, T, hd, generator=g)                          # (B, H_kv, T, hd)
        v = torch.randn(B, H_kv, T, hd, generator=g)
        expected = _attention_reference(q, k, v)                              # (B, H, T, hd)
        answer = _tensor(learner(label, q.clone(), k.clone(), v.clone()), label)
        _require_shape(answer, expected.shape, label,
                       hint="return the attention output (weights @ v), one vector per query head and position")
        if torch.isnan(answer).any():
            raise _Mistake(f"{label}: your output contains NaN.",
                           "a row with every score masked: a position attends to itself too, so mask only "
                           "positions s > t (the diagonal stays)")
        if _close(answer, expected, atol=1e-5):
            continue
        group = H // H_kv
        k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        k_tiled, v_tiled = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
        future = torch.ones(T, T, dtype=torch.bool).triu(1)                   # (T, T) s > t
        scores = q @ k_rep.transpose(-2, -1)                                  # (B, H, T, T) unscaled
        variants = [
            ("query heads 0 .. H/H_kv - 1 share key/value head 0: repeat each head in place "
             "(0, 0, 1, 1), don't tile the heads (0, 1, 0, 1)",
             lambda: F.scaled_dot_product_attention(q, k_tiled, v_tiled, is_causal=True)),
            ("position t must not see positions after it: mask the scores where s > t with -inf before the softmax",
             lambda: F.scaled_dot_product_attention(q, k_rep, v_rep)),
            ("you masked the past: position t may see positions s <= t, not s >= t",
             lambda: (scores / math.sqrt(hd)).masked_fill(future.T, float("-inf")).softmax(-1) @ v_rep),
            ("scale the scores by 1 / sqrt(head_dim) before the softmax",
             lambda: scores.masked_fill(future, float("-inf")).softmax(-1) @ v_rep),
            ("the scale is 1 / sqrt(head_dim), not 1 / head_dim",
             lambda: (scores / hd).masked_fill(future, float("-inf")).softmax(-1) @ v_rep),
            ("the softmax runs over the key positions (the last dimension): each query's weights sum to 1",
             lambda: (scores / math.sqrt(hd)).masked_fill(future, float("-inf")).softmax(-2).nan_to_num() @ v_rep),
        ]
        hint = _diagnose(answer, variants, "softmax(q k^T / sqrt(head_dim) + causal mask) @ v, with each key/value "
                                           "head repeated for its group of query heads", atol=1e-5)
        raise _Mistake(f"{label}: your output differs from the course's attention.", hint)
    return f"{len(shapes)} hidden cases agree with grouped-query scaled_dot_product_attention (tolerance 1e-5)."


def _block_parameters(cfg: ModelConfig) -> int:
    """Parameters of one dense ``Block``, counted on the module (built on the meta device: no memory)."""
    with torch.device("meta"):
        block = Block(cfg, 0)
    return sum(p.numel() for p in block.parameters())


def _block_error_hint(error: Exception) -> str:
    if "NoneType" in str(error):
        return ("cfg.n_kv_heads and cfg.head_dim are None unless set: use the derived cfg.kv_heads and "
                "cfg.head_size")
    return ""


@_exercise("01_dense_model", "block_parameter_count(cfg): the parameters of one dense block, by formula",
           _block_error_hint)
def _check_block_parameter_count(learner) -> str:
    base = dict(vocab_size=256, max_seq_len=64)
    configs = [
        ("the laptop model", preset("laptop").model),
        ("grouped-query attention: 6 heads, 2 key/value heads",
         ModelConfig(d_model=96, n_layers=2, n_heads=6, n_kv_heads=2, d_ff=256, **base)),
        ("an explicit head_dim: 4 heads of 32 on a 64-wide model",
         ModelConfig(d_model=64, n_layers=3, n_heads=4, head_dim=32, d_ff=160, **base)),
        ("one key/value head", ModelConfig(d_model=48, n_layers=1, n_heads=4, n_kv_heads=1, d_ff=100, **base)),
        ("the tiny model", preset("tiny").model),
    ]
    for label, (_, cfg) in zip(_labels([text for text, _ in configs]), configs):
        expected = _block_parameters(cfg)
        answer = _number(learner(label, cfg), label)
        if answer == expected:
            continue
        d, H, H_kv, hd, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.d_ff
        attention, ffn, norms = 2 * d * H * hd + 2 * d * H_kv * hd, 3 * d * f, 2 * d
        variants = [
            ("a block has two RMSNorm gains of d_model entries each (attention_norm and ffn_norm)",
             [attention + ffn, attention + ffn + d, attention + ffn + 3 * d]),
            ("wk and wv have kv_heads * head_size outputs (grouped-query attention), wq and wo n_heads * head_size",
             [4 * d * H * hd + ffn + norms]),
            ("wq and wo are d_model x (n_heads * head_size), which need not be d_model x d_model",
             [2 * d * d + 2 * d * H_kv * (d // H) + ffn + norms, 4 * d * d + ffn + norms]),
            ("SwiGLU has three matrices: w1 (gate), w3 (up) and w2 (down), each d_model x d_ff",
             [attention + 2 * d * f + norms]),
            ("the course's linear layers have no biases",
             [attention + ffn + norms + H * hd + 2 * H_kv * hd + d + 2 * f + d]),
        ]
        hint = next((h for h, values in variants if answer in values),
                    "count every tensor of one block: wq, wk, wv, wo, w1, w3, w2 and the two norm gains")
        raise _Mistake(f"{label}: your count differs from the parameters of moe_helpers.model.Block.", hint)
    return f"{len(configs)} hidden configs agree with the parameters of moe_helpers.model.Block, exactly."


# ========================================================== 02 · expert routing
@_exercise("02_expert_routing", "route_top_k(router_logits, k): softmax, top-k, renormalise; "
           "(weights, experts), best first")
def _check_route_top_k(learner) -> str:
    g = _generator(201)
    descriptions = ["16 tokens, 8 experts, top-2", "top-1", "k = E: every expert", "ties between experts",
                    "large logits (up to 100)"]
    cases = [
        (2.0 * torch.randn(16, 8, generator=g), 2),
        (torch.randn(6, 4, generator=g), 1),
        (torch.randn(4, 3, generator=g), 3),
        (torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 3.0, 3.0, 1.0], [0.5, 0.0, 0.5, 0.5]]), 2),
        (100.0 * torch.rand(5, 6, generator=g), 2),
    ]
    for label, (logits, k) in zip(_labels(descriptions), cases):
        N, E = logits.shape
        router = Router(1, E, k)
        expected_weights, expected_experts = router.route(logits)             # (N, k), (N, k)
        out = learner(label, logits.clone(), k)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise _Mistake(f"{label}: return a pair (weights, experts), got {type(out).__name__}.")
        weights, experts = _tensor(out[0], label, "weights"), _tensor(out[1], label, "experts")
        if weights.dtype in (torch.int32, torch.int64) and experts.is_floating_point():
            raise _Mistake(f"{label}: the pair is the wrong way round.", "return (weights, experts), weights first")
        _require_shape(weights, (N, k), label, "weights", "one weight per chosen expert: (N, k), for the given k")
        _require_shape(experts, (N, k), label, "experts", "the indices of the k chosen experts: (N, k)")
        if experts.is_floating_point() or experts.min() < 0 or experts.max() >= E:
            raise _Mistake(f"{label}: experts should be integer indices in 0 .. E-1.",
                           "topk returns (values, indices): the experts are the indices")
        if torch.isnan(weights).any():
            raise _Mistake(f"{label}: your weights contain NaN.",
                           "exp of large logits overflows: use .softmax(dim=-1), which subtracts the maximum first")
        probs = logits.softmax(dim=-1)                                        # (N, E)
        chosen = probs.gather(1, experts.long())                              # (N, k) their probabilities
        distinct = all(len(set(row)) == k for row in experts.tolist())
        if not (distinct and _close(chosen, probs.topk(k, dim=-1).values)):
            if distinct and _close(chosen.sort(dim=-1, descending=True).values, probs.topk(k, dim=-1).values):
                hint = "the right experts, in the wrong order: best expert first (largest probability first)"
            elif torch.equal(experts.long(), logits.softmax(0).topk(k, dim=-1).indices):
                hint = "the softmax runs over the experts (dim=-1): each token's probabilities sum to 1"
            elif torch.equal(experts.long(), probs.topk(k, dim=-1, largest=False).indices):
                hint = "top-k means the k *largest* probabilities"
            else:
                hint = "each token chooses the k experts with the largest router probabilities, all different"
            raise _Mistake(f"{label}: the chosen experts are not each token's top-{k}.", hint)
        if _close(weights, expected_weights):
            continue
        top_logits = logits.topk(k, dim=-1).values                            # (N, k)
        variants = [
            ("the weights of each token should sum to 1: did you renormalise over the top-k only?",
             lambda: probs.topk(k, dim=-1).values),
            ("the softmax runs over the experts (dim=-1), not over the tokens",
             lambda: logits.softmax(0).topk(k, dim=-1).values),
            ("turn the logits into probabilities with a softmax first",
             lambda: top_logits / top_logits.sum(-1, keepdim=True)),
            ("turn the logits into probabilities with a softmax first", lambda: top_logits),
        ]
        hint = _diagnose(weights, variants, "the weight of a chosen expert is its probability divided by the sum "
                                            "of the chosen experts' probabilities")
        raise _Mistake(f"{label}: the weights differ from moe_helpers.moe.Router.route.", hint)
    return f"{len(cases)} hidden cases agree with moe_helpers.moe.Router.route (tolerance 1e-5; ties accepted)."


class _CountedExpert(FeedForward):
    """A SwiGLU expert that records how many token rows each call gives it."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__(d_model, d_ff)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.reshape(-1, x.shape[-1]).shape[0] if x.dim() else 0)
        return super().forward(x)


def _moe_by_hand(x, top_k_weights, top_k_experts, experts) -> torch.Tensor:
    """y_t = sum over the chosen experts i of g_ti * Expert_i(x_t), one token at a time (notebook 02, section 2)."""
    output = torch.zeros_like(x)                                              # (N, d)
    with torch.no_grad():
        for t in range(x.shape[0]):
            for weight, expert in zip(top_k_weights[t], top_k_experts[t].tolist()):
                output[t] += weight * experts[expert](x[t])
    return output


@_exercise("02_expert_routing", "moe_forward(x, top_k_weights, top_k_experts, experts): dispatch, run each "
           "expert once on its tokens, weight and add back")
def _check_moe_forward(learner) -> str:
    g = _generator(202)
    d, d_ff = 8, 16
    descriptions = ["12 tokens, 4 experts, top-2", "top-1: every weight is 1", "an expert that receives no tokens",
                    "every token picks the same two experts"]
    routing = [(12, 4, 2, None), (9, 4, 1, None), (10, 4, 2, [0, 1, 3]), (6, 3, 2, "same")]
    for label, (N, E, k, allowed) in zip(_labels(descriptions), routing):
        logits = torch.randn(N, E, generator=g)                               # (N, E)
        if allowed == "same":
            logits = torch.tensor([0.0, -5.0, 5.0]).expand(N, E) + 0.1 * torch.randn(N, E, generator=g)
        elif allowed is not None:
            logits[:, [e for e in range(E) if e not in allowed]] = -1e4     # never chosen
        top_k_weights, top_k_experts = Router(1, E, k).route(logits)          # (N, k), (N, k)
        x = torch.randn(N, d, generator=g)                                    # (N, d)
        experts = nn.ModuleList(_randomise(_CountedExpert(d, d_ff), g, 0.5) for _ in range(E))
        expected = _moe_by_hand(x, top_k_weights, top_k_experts, experts)     # (N, d)
        for expert in experts:
            expert.calls.clear()
        answer = _tensor(learner(label, x.clone(), top_k_weights.clone(), top_k_experts.clone(), experts), label)
        _require_shape(answer, (N, d), label, hint="one output vector per token: (N, d_model)")
        if not _close(answer, expected, atol=1e-5):
            def only_rank(rank):
                return _moe_by_hand(x, top_k_weights * F.one_hot(torch.tensor(rank), k), top_k_experts, experts)
            variants = [
                ("multiply each expert's output by the token's gate weight for that expert",
                 lambda: _moe_by_hand(x, torch.ones_like(top_k_weights), top_k_experts, experts)),
                ("a token's output is the sum of its k weighted expert outputs: add them up "
                 "(+= or index_add_), don't overwrite", lambda: only_rank(0)),
                ("a token's output is the sum of its k weighted expert outputs: add them up "
                 "(+= or index_add_), don't overwrite", lambda: only_rank(k - 1)),
                ("use the weight of each (token, rank) slot, not the token's first weight for every expert",
                 lambda: _moe_by_hand(x, top_k_weights[:, :1].expand(N, k), top_k_experts, experts)),
            ]
            hint = _diagnose(answer, variants, "compare with the per-token loop of section 2 "
                                               "(moe_output_by_hand) on the first few tokens", atol=1e-5)
            raise _Mistake(f"{label}: your output differs from the per-token MoE output.", hint)
        slots = count_per_expert(top_k_experts, E).tolist()                   # (E,) slots of each expert
        for e, expert in enumerate(experts):
            if len([rows for rows in expert.calls if rows]) > 1:
                raise _Mistake(f"{label}: the output is right, but expert {e} was called {len(expert.calls)} times.",
                               "gather all the tokens routed to an expert and run it once on them (section 4)")
            if sum(expert.calls) > slots[e]:
                raise _Mistake(f"{label}: the output is right, but expert {e} computed more token rows than "
                               "were routed to it.",
                               "run each expert only on the tokens that chose it: no expert computes a token "
                               "it was not chosen for")
    return f"{len(routing)} hidden cases agree with the per-token MoE output (tolerance 1e-5), one call per expert."


@_exercise("02_expert_routing", "balance_loss(router_logits, k): the Switch load-balancing loss E * sum_i f_i P_i")
def _check_balance_loss(learner) -> str:
    g = _generator(203)
    collapsed = torch.tensor([8.0, 0, 0, 0]) + 0.3 * torch.randn(16, 4, generator=g)
    never = torch.randn(20, 5, generator=g)
    never[:, 4] = -20.0                                                       # expert 4 is never chosen
    descriptions = ["64 tokens, 8 experts, top-2, a fresh router", "the three tokens of section 5, top-1",
                    "a collapsed router, top-1", "an expert that is never chosen, top-2", "top-3 of 6 experts"]
    cases = [
        (0.5 * torch.randn(64, 8, generator=g), 2),
        (torch.tensor([[0.99, 0.01], [0.49, 0.51], [0.49, 0.51]]).log(), 1),
        (collapsed, 1),
        (never, 2),
        (torch.randn(30, 6, generator=g), 3),
    ]
    for index, (label, (logits, k)) in enumerate(zip(_labels(descriptions), cases)):
        leaf = logits.clone().requires_grad_(index == 0)                      # the first case checks the gradient
        expected = load_balancing_loss(logits, k)
        out = learner(label, leaf, k)
        answer = _number(out, label, "the loss")
        if not math.isfinite(answer) or not math.isclose(answer, expected.item(), rel_tol=1e-5, abs_tol=1e-6):
            N, E = logits.shape
            probs = logits.softmax(-1)                                        # (N, E)
            f = count_per_expert(probs.topk(k, -1).indices, E).float() / (N * k)   # (E,)
            P = probs.mean(0)                                                 # (E,)
            top_w = probs.topk(k, -1)
            renormalised = torch.zeros_like(probs).scatter(1, top_w.indices, top_w.values / top_w.values.sum(-1, keepdim=True))
            variants = [
                ("f_i counts token slots (the fraction of the N·k top-k choices that went to expert i), "
                 "it is not a probability", lambda: E * (P * P).sum()),
                ("f_i is a fraction of all N·k slots (each token fills k of them)",
                 lambda: E * (f * k * P).sum()),
                ("multiply by E, so that a perfectly balanced router gives 1",
                 lambda: (f * P).sum()),
                ("count all k choices of each token, not only the first",
                 lambda: E * (count_per_expert(probs.argmax(-1), E).float() / N * P).sum()),
                ("P_i is the mean of the full softmax probability of expert i over all tokens",
                 lambda: E * (f * renormalised.mean(0)).sum()),
                ("the softmax runs over the experts (dim=-1)",
                 lambda: E * (count_per_expert(logits.softmax(0).topk(k, -1).indices, E).float() / (N * k)
                              * logits.softmax(0).mean(0)).sum()),
            ]
            hint = _diagnose(torch.tensor(answer), variants, "loss = E * sum over experts of f_i * P_i: f from the "
                                                             "top-k counts, P from the mean softmax")
            raise _Mistake(f"{label}: your loss differs from moe_helpers.moe.load_balancing_loss.", hint)
        if index == 0:
            if not (isinstance(out, torch.Tensor) and out.requires_grad):
                raise _Mistake(f"{label}: the value is right, but your loss carries no gradient.",
                               "return a tensor computed with torch operations from the logits: training needs "
                               "the gradient that flows through P (avoid .item(), float(), NumPy)")
            (expected_grad,) = torch.autograd.grad(load_balancing_loss(leaf, k), leaf)
            (answer_grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
            if answer_grad is None or not _close(answer_grad, expected_grad, atol=1e-6):
                raise _Mistake(f"{label}: the value is right, but its gradient is not.",
                               "f is a count and carries no gradient; the gradient flows only through P")
    return (f"{len(cases)} hidden cases agree with moe_helpers.moe.load_balancing_loss (tolerance 1e-5), "
            "gradient included.")


# ===================================================== 03 · parameter accounting
def _accounting_configs() -> list[tuple[str, ModelConfig]]:
    dense = preset("laptop").model
    moe = dense.upcycled(4, 2)
    return [
        ("the laptop MoE: 4 experts, top-2", moe),
        ("a dense model (num_experts = 0)", dense),
        ("the seed MoE: tied embeddings, 8 experts, top-2", preset("seed").phase_configs()[1]),
        ("grouped-query attention and an explicit head_dim", moe.replace(n_kv_heads=2, head_dim=48)),
        ("a shared expert and a dense first block", moe.replace(num_shared_experts=1, shared_d_ff=192,
                                                                first_k_dense=1, dense_d_ff=768)),
        ("top-k = E: every expert runs", moe.replace(top_k=4)),
        ("top-1 of 16 experts", moe.replace(num_experts=16, top_k=1)),
    ]


def _count_with(cfg: ModelConfig, mistake: str | None = None) -> tuple[int, int]:
    """(total, active) of ``cfg`` by formula, or with one typical ``mistake`` (see ``_COUNT_HINTS``)."""
    d, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    hd = cfg.d_model // cfg.n_heads if mistake == "head_dim" else cfg.head_size
    kv = cfg.n_heads if mistake == "gqa" else cfg.kv_heads
    q_width = d if mistake == "head_dim" else cfg.n_heads * hd
    attention = 2 * d * q_width + 2 * d * kv * hd                            # wq, wo; wk, wv
    moe_blocks = (L if cfg.is_moe else 0) if mistake == "first_k_dense" else cfg.num_moe_layers
    expert = 3 * d * cfg.d_ff                                                 # w1, w3, w2
    router = 0 if mistake == "no_router" else d * cfg.num_experts
    shared = 0 if mistake == "no_shared" else cfg.num_shared_experts * 3 * d * cfg.shared_hidden
    lm_head = V * d if (not cfg.tie_embeddings or mistake == "tied_twice") and mistake != "no_lm_head" else 0
    norms = (2 * L + (0 if mistake == "final_norm" else 1)) * d
    total = (V * d + lm_head + L * attention + norms
             + moe_blocks * (router + cfg.num_experts * expert + shared)
             + (L - moe_blocks) * 3 * d * cfg.dense_hidden)
    idle = (cfg.top_k if mistake == "idle_k" else cfg.num_experts - cfg.top_k) if moe_blocks else 0
    inactive = moe_blocks * idle * expert
    inactive += {"router_inactive": moe_blocks * router, "shared_inactive": moe_blocks * shared,
                 "embedding_inactive": V * d}.get(mistake, 0)
    return total, total - inactive


_COUNT_HINTS = {
    "router_inactive": "every token runs the router of each MoE block: count it as active",
    "no_router": "each MoE block also stores its router, a Linear(d_model, num_experts) without bias",
    "embedding_inactive": "the course (like Mistral and most publishers) counts the input embedding as active",
    "tied_twice": "with tie_embeddings the LM head *is* the embedding table: count it once",
    "no_lm_head": "the LM head (vocab_size x d_model) is a separate matrix unless tie_embeddings is set",
    "final_norm": "there are 2 L + 1 norm gains: two per block and the final norm",
    "gqa": "wk and wv have kv_heads * head_size outputs (grouped-query attention)",
    "head_dim": "the attention width is n_heads * head_size, which need not equal d_model",
    "no_shared": "count the shared experts too: num_shared_experts SwiGLU FFNs of hidden size shared_hidden per "
                 "MoE block",
    "shared_inactive": "shared experts run for every token: they are active",
    "first_k_dense": "the first first_k_dense blocks are dense: one FFN of hidden size dense_hidden, no router, "
                     "no experts",
    "idle_k": "each MoE block leaves num_experts - top_k experts idle per token",
}


def _counts_error_hint(error: Exception) -> str:
    if "NoneType" in str(error):
        return ("optional fields (n_kv_heads, head_dim, shared_d_ff, dense_d_ff) may be None: use cfg.kv_heads, "
                "cfg.head_size, cfg.shared_hidden, cfg.dense_hidden, cfg.num_moe_layers")
    return _block_error_hint(error)


@_exercise("03_parameter_accounting", "moe_parameter_counts(cfg): (total, active) parameters of a model config, "
           "by formula", _counts_error_hint)
def _check_moe_parameter_counts(learner) -> str:
    configs = _accounting_configs()
    for label, (_, cfg) in zip(_labels([text for text, _ in configs]), configs):
        reference = count_from_config(cfg)
        expected = (reference.total, reference.active)
        out = learner(label, cfg)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise _Mistake(f"{label}: return a pair (total, active), got {type(out).__name__}.")
        answer = (_number(out[0], label, "total"), _number(out[1], label, "active"))
        if answer == expected:
            continue
        right = ("total is right, active is not" if answer[0] == expected[0] else
                 "active is right, total is not" if answer[1] == expected[1] else "total and active both differ")
        hint = next((text for mistake, text in _COUNT_HINTS.items() if answer == _count_with(cfg, mistake)),
                    "add up embedding, LM head, attention, norms, routers, experts, shared experts and dense FFNs; "
                    "inactive = idle experts per block x expert size x MoE blocks")
        raise _Mistake(f"{label}: {right} (compared with moe_helpers.accounting.count_from_config).", hint)
    return f"{len(configs)} hidden configs agree with moe_helpers.accounting.count_from_config, exactly."


def _flops_with(cfg: ModelConfig, seq_len: int, mistake: str | None = None) -> float:
    """Forward FLOPs per token, or with one typical ``mistake`` (see ``_FLOP_HINTS``)."""
    counts = count_from_config(cfg)
    embedding, norms = counts.by_part["embedding"], counts.by_part["norms"]
    matmul = (counts.total if mistake == "total" else counts.active) - embedding - norms
    if cfg.tie_embeddings and mistake != "tied_head":
        matmul += embedding                                                   # the tied table is still the LM head
    matmul += {"embedding": embedding, "norms": norms}.get(mistake, 0)
    heads_width = cfg.d_model if mistake == "attention_d_model" else cfg.n_heads * cfg.head_size
    attention = {"no_attention": 0, "attention_2": 2}.get(mistake, 4) * cfg.n_layers * seq_len * heads_width
    forward = (1 if mistake == "factor_2" else 2) * matmul + attention
    return float(3 * forward if mistake == "training" else forward)


_FLOP_HINTS = {
    "embedding": "the input embedding is a table lookup, not a matrix product: leave it out",
    "norms": "norm gains multiply elementwise, they are not matrix products: leave them out",
    "total": "only the active parameters compute: a token runs k of the E experts",
    "tied_head": "with tied embeddings the table still does the LM-head matrix product: count it once",
    "factor_2": "each weight of a matrix product costs one multiply and one add: 2 FLOPs",
    "no_attention": "add the attention term: scores and weighted sum over the seq_len context, 4 L T H hd",
    "attention_2": "attention is two products per head (q k^T and weights @ v), 2 T hd FLOPs each",
    "attention_d_model": "the attention term uses n_heads * head_size, which need not equal d_model",
    "training": "the forward pass only (training is 3 x forward)",
}


@_exercise("03_parameter_accounting", "forward_flops_per_token(cfg, seq_len): forward FLOPs per token "
           "(PaLM's convention)", _counts_error_hint)
def _check_forward_flops_per_token(learner) -> str:
    configs = _accounting_configs()[:5]
    lengths = [128, 512, 256, 64, 128]
    for label, (_, cfg), seq_len in zip(_labels([f"{text}, {T} tokens" for (text, _), T in zip(configs, lengths)]),
                                        configs, lengths):
        expected = flops_per_token(cfg, seq_len).forward
        answer = _number(learner(label, cfg, seq_len), label)
        if math.isclose(answer, expected, rel_tol=1e-9):
            continue
        hint = next((text for mistake, text in _FLOP_HINTS.items()
                     if math.isclose(answer, _flops_with(cfg, seq_len, mistake), rel_tol=1e-9)),
                    "2 x (active parameters that multiply) + 4 x n_layers x seq_len x n_heads x head_size")
        raise _Mistake(f"{label}: your count differs from moe_helpers.accounting.flops_per_token.", hint)
    return f"{len(configs)} hidden configs agree with moe_helpers.accounting.flops_per_token, exactly."


_DTYPES = {2: torch.bfloat16, 4: torch.float32, 8: torch.float64}


@_exercise("03_parameter_accounting", "training_memory_bytes(cfg, bytes_per_value): weights, gradients and "
           "AdamW state in bytes", _counts_error_hint)
def _check_training_memory_bytes(learner) -> str:
    configs = _accounting_configs()
    # the 8-byte case comes early: at 2 bytes, "one moment" and "moments at the weights' precision" coincide
    chosen = [(configs[0], 4), (configs[3], 8), (configs[0], 2), (configs[2], 2), (configs[1], 4), (configs[4], 2)]
    descriptions = [f"{text}, {b}-byte weights" for (text, _), b in chosen]
    for label, ((_, cfg), value_bytes) in zip(_labels(descriptions), chosen):
        expected = memory_bytes(cfg, _DTYPES[value_bytes], "adamw").total
        answer = _number(learner(label, cfg, value_bytes), label)
        if answer == expected:
            continue
        counts = count_from_config(cfg)
        total, active = counts.total, counts.active
        variants = [
            ("every expert must be in memory, used by this token or not: memory follows the *total*",
             active * (2 * value_bytes + 8)),
            ("training keeps one gradient per parameter, at the weights' precision", total * (value_bytes + 8)),
            ("AdamW keeps two moments per parameter (first and second)", total * (2 * value_bytes + 4)),
            ("AdamW's moments are float32 (4 bytes each) whatever the weights' precision", total * 4 * value_bytes),
            ("this exercise leaves out the float32 master copy of the weights", total * (2 * value_bytes + 12)),
        ]
        hint = next((h for h, value in variants if answer == value),
                    "bytes = parameters x (weights + gradients at bytes_per_value, two float32 AdamW moments)")
        raise _Mistake(f"{label}: your count differs from moe_helpers.accounting.memory_bytes.", hint)
    return f"{len(chosen)} hidden cases agree with moe_helpers.accounting.memory_bytes, exactly."


# ======================================================== 04 · sparse upcycling
_UPCYCLE_DENSE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=48, max_seq_len=16)


def _upcycle_error_hint(error: Exception) -> str:
    if isinstance(error, KeyError):
        return "iterate over dense_state.items() and build a new dict; don't look up names the dense model lacks"
    return ""


@_exercise("04_sparse_upcycling", "upcycle_state_dict(dense_state, num_experts, router_std, generator): "
           "a dense model's weights as an MoE's", _upcycle_error_hint)
def _check_upcycle_state_dict(learner) -> str:
    descriptions = ["4 experts, router std 0.02", "a single expert", "3 experts, router std 0.1, no generator"]
    cases = [(4, 0.02, 11), (1, 0.02, 12), (3, 0.1, None)]
    torch.manual_seed(401)
    dense = GPT(_UPCYCLE_DENSE).eval()
    idx = torch.randint(0, _UPCYCLE_DENSE.vocab_size, (2, 12), generator=_generator(402))   # (B, T)
    with torch.no_grad():
        dense_logits = dense(idx).logits                                      # (B, T, V)
    original = _state_copy(dense)
    for label, (E, std, seed) in zip(_labels(descriptions), cases):
        dense_state = _state_copy(dense)
        generator = None if seed is None else _generator(seed)
        state = learner(label, dense_state, E, std, generator)
        if not isinstance(state, dict):
            raise _Mistake(f"{label}: return a dict of tensors (a state dict), got {type(state).__name__}.")
        if dense_state.keys() != original.keys() or any(not torch.equal(dense_state[n], original[n]) for n in original):
            raise _Mistake(f"{label}: your function changed dense_state.",
                           "build a new dict; the dense model's weights must stay as they were")
        moe_cfg = _UPCYCLE_DENSE.upcycled(E, min(2, E))
        with torch.random.fork_rng(devices=[]):
            moe = GPT(moe_cfg).eval()
        wanted = moe.state_dict()
        missing, unexpected = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
        if missing or unexpected:
            problem = "; ".join(f"{kind} {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                                for kind, names in (("missing", missing), ("unexpected", unexpected)) if names)
            raise _Mistake(f"{label}: the names do not match an MoE model's: {problem}.",
                           "each `layers.<i>.ffn.<w>.weight` becomes `layers.<i>.ffn.experts.<e>.<w>.weight` for "
                           "every expert e, and each block gets a `layers.<i>.ffn.router.weight`")
        for name, tensor in wanted.items():
            if not isinstance(state[name], torch.Tensor) or tuple(state[name].shape) != tuple(tensor.shape):
                shape = tuple(state[name].shape) if isinstance(state[name], torch.Tensor) else type(state[name]).__name__
                raise _Mistake(f"{label}: {name} has shape {shape}, expected {tuple(tensor.shape)}.",
                               "the router of a block is a (num_experts, d_model) matrix")
        for name, tensor in state.items():
            if ".ffn." not in name and not torch.equal(tensor, original[name]):
                raise _Mistake(f"{label}: {name} is not the dense model's.", "only the FFNs change; copy everything else")
            if ".ffn.experts." in name:
                prefix, rest = name.split(".ffn.experts.")
                dense_weight = original[f"{prefix}.ffn.{rest.split('.', 1)[1]}"]
                if not torch.equal(tensor, dense_weight):
                    scaled = torch.allclose(tensor * E, dense_weight) and E > 1
                    raise _Mistake(f"{label}: {name} is not a copy of the block's dense FFN weight.",
                                   "no scaling: the renormalised weights of the chosen experts already sum to 1"
                                   if scaled else "every expert is an exact copy of its block's dense FFN")
        for layer in range(moe_cfg.n_layers):
            router = state[f"layers.{layer}.ffn.router.weight"].float()       # (E, d_model)
            if E > 1 and torch.allclose(router, router[:1].expand_as(router)):
                raise _Mistake(f"{label}: the router of block {layer} gives every expert the same score.",
                               "draw the router at random (normal, std router_std): equal scores send every "
                               "token to the same experts")
            if not 0.6 * std < router.std().item() < 1.5 * std or router.mean().abs() > 0.6 * std:
                raise _Mistake(f"{label}: the router of block {layer} is not drawn from N(0, router_std^2).",
                               "torch.randn(num_experts, d_model, generator=generator) * router_std")
        if generator is not None:
            again = learner(label, _state_copy(dense), E, std, _generator(seed))
            if not all(torch.equal(again[f"layers.{i}.ffn.router.weight"], state[f"layers.{i}.ffn.router.weight"])
                       for i in range(moe_cfg.n_layers)):
                raise _Mistake(f"{label}: two calls with equally seeded generators drew different routers.",
                               "draw the router with the `generator` you are given (torch.randn(..., generator=...))")
        moe.load_state_dict(state)
        with torch.no_grad():
            jump = (moe(idx).logits - dense_logits).abs().max().item()
        if jump > 1e-5:
            raise _Mistake(f"{label}: the MoE does not compute what the dense model did.",
                           "every expert a copy of the dense FFN, and every other weight unchanged")
    return (f"{len(cases)} hidden cases: the names and shapes of an MoE model, copied experts, a random router, "
            "and the same logits as the dense model (tolerance 1e-5).")


@_exercise("04_sparse_upcycling", "chosen_mass(router_logits, k): the factor by which an upcycled layer "
           "without renormalisation scales FFN(x)")
def _check_chosen_mass(learner) -> str:
    g = _generator(403)
    descriptions = ["32 tokens, 4 experts, top-2", "top-1 of 8", "k = E: every expert", "ties between experts",
                    "large logits (up to 100)"]
    cases = [(torch.randn(32, 4, generator=g), 2), (torch.randn(10, 8, generator=g), 1),
             (torch.randn(5, 3, generator=g), 3), (torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 2.0, 2.0]]), 2),
             (100.0 * torch.rand(6, 5, generator=g), 2)]
    for label, (logits, k) in zip(_labels(descriptions), cases):
        N, E = logits.shape
        weights, _ = Router(1, E, k, renormalize=False).route(logits)         # (N, k) raw probabilities
        expected = weights.sum(-1)                                            # (N,)
        answer = _tensor(learner(label, logits.clone(), k), label)
        _require_shape(answer, (N,), label, hint="one factor per token: (N,)")
        if torch.isnan(answer).any():
            raise _Mistake(f"{label}: your output contains NaN.",
                           "exp of large logits overflows: use .softmax(dim=-1)")
        if _close(answer, expected):
            continue
        probs = logits.softmax(-1)
        variants = [
            ("your factors are all 1: that is the renormalised case (or the sum over all experts); "
             "without renormalisation only the k chosen raw probabilities are added",
             lambda: torch.ones(N)),
            ("turn the logits into probabilities with a softmax first",
             lambda: logits.topk(k, -1).values.sum(-1)),
            ("the softmax runs over the experts (dim=-1)",
             lambda: logits.softmax(0).topk(k, -1).values.sum(-1)),
            ("add the k chosen probabilities up, don't average them",
             lambda: probs.topk(k, -1).values.mean(-1)),
            ("top-k means the k *largest* probabilities",
             lambda: probs.topk(k, -1, largest=False).values.sum(-1)),
        ]
        hint = _diagnose(answer, variants, "sum of the k largest softmax probabilities of each token")
        raise _Mistake(f"{label}: your factors differ from the non-renormalised Router's weights summed.", hint)
    return f"{len(cases)} hidden cases agree with moe_helpers.moe.Router(renormalize=False) (tolerance 1e-5)."


# ======================================================== 05 · bilateral growth
def _ffn(d_model: int, d_ff: int, generator: torch.Generator) -> FeedForward:
    return _randomise(FeedForward(d_model, d_ff), generator, 0.4)


def _widened_ffn(ffn: FeedForward, factor: int, scale=(1.0, 1.0, 1.0)) -> FeedForward:
    """``ffn`` widened by ``factor`` with ``moe_helpers.growth.widen_linear``; ``scale`` multiplies
    (w1, w3, w2) afterwards, to make the typical mistakes."""
    d_ff, d_model = ffn.w1.weight.shape
    wide = FeedForward(d_model * factor, d_ff * factor)
    with torch.no_grad():
        for name, times in zip(("w1", "w3", "w2"), scale):
            getattr(wide, name).weight.copy_(widen_linear(getattr(ffn, name).weight, factor) * times)
    return wide


def _call_module(module, x, label: str) -> torch.Tensor:
    if not callable(module):
        raise _Mistake(f"{label}: return a module (an nn.Module such as FeedForward), got {type(module).__name__}.")
    with torch.no_grad():
        out = module(x)
    return _tensor(out[0] if isinstance(out, tuple) else out, label)


@_exercise("05_bilateral_growth", "widen_ffn(ffn, factor): a FeedForward factor x wider that maps [x, ..., x] "
           "to [FFN(x), ..., FFN(x)]")
def _check_widen_ffn(learner) -> str:
    g = _generator(501)
    descriptions = ["factor 2", "factor 3", "factor 1: nothing changes", "factor 2 of a wider FFN"]
    cases = [(_ffn(8, 12, g), 2), (_ffn(6, 10, g), 3), (_ffn(8, 12, g), 1), (_ffn(4, 20, g), 2)]
    for label, (ffn, factor) in zip(_labels(descriptions), cases):
        d_ff, d_model = ffn.w1.weight.shape
        before = _state_copy(ffn)
        x = torch.randn(5, d_model, generator=g)                              # (N, d)
        with torch.no_grad():
            expected = ffn(x).repeat(1, factor)                               # (N, d * factor)
        wide = learner(label, ffn, factor)
        if not _same_state(ffn, before):
            raise _Mistake(f"{label}: your function changed the FFN it was given.",
                           "build a new FeedForward; the small model must stay as it was")
        if wide is ffn:
            raise _Mistake(f"{label}: you returned the FFN you were given.", "return a new FeedForward")
        w1 = getattr(wide, "w1", None)
        if isinstance(w1, nn.Linear) and tuple(w1.weight.shape) != (d_ff * factor, d_model * factor):
            raise _Mistake(f"{label}: w1 has shape {tuple(w1.weight.shape)}, expected "
                           f"{(d_ff * factor, d_model * factor)}.",
                           "both widths grow: FeedForward(d_model * factor, d_ff * factor)")
        answer = _call_module(wide, x.repeat(1, factor), label)
        _require_shape(answer, expected.shape, label, hint="the output is factor copies of FFN(x): tile w2's rows too")
        if _close(answer, expected, atol=1e-5):
            continue
        n, wide_x = factor, x.repeat(1, factor)
        variants = [
            ("input columns are tiled *and divided by the factor*: [W/n, ..., W/n] [x; ...; x] = W x",
             lambda: _call_module(_widened_ffn(ffn, n, (n, n, n)), wide_x, label)),
            ("divide once, by the factor, for the tiled input columns; the tiled output rows are not divided again",
             lambda: _call_module(_widened_ffn(ffn, n, (1 / n, 1 / n, 1 / n)), wide_x, label)),
            ("w2 reads the widened hidden layer: its tiled input columns are divided by the factor too",
             lambda: _call_module(_widened_ffn(ffn, n, (1, 1, n)), wide_x, label)),
            ("w1 and w3 read the widened input: their tiled input columns are divided by the factor too",
             lambda: _call_module(_widened_ffn(ffn, n, (n, n, 1)), wide_x, label)),
        ]
        hint = _diagnose(answer, variants, "check each matrix on its own: W' [x; ...; x] must be [W x; ...; W x]",
                         atol=1e-5)
        raise _Mistake(f"{label}: the widened FFN does not map [x, ..., x] to [FFN(x), ..., FFN(x)].", hint)
    return f"{len(cases)} hidden cases: the widened FFN preserves the function (tolerance 1e-5)."


def _block_config(**moe) -> ModelConfig:
    return ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_seq_len=16, **moe)


def _identity_error_hint(error: Exception) -> str:
    if isinstance(error, AttributeError) and "w2" in str(error):
        return "an MoE block has one w2 per expert (block.ffn.experts) and per shared expert (block.ffn.shared_experts)"
    return ""


def _is_output_projection(name: str) -> bool:
    return name.endswith(("attention.wo.weight", "w2.weight"))


@_exercise("05_bilateral_growth", "identity_copy(block): a copy of a block whose output projections are zero, "
           "so it computes the identity", _identity_error_hint)
def _check_identity_copy(learner) -> str:
    g = _generator(502)
    descriptions = ["a dense block", "an MoE block: 3 experts, top-2", "an MoE block with a shared expert"]
    configs = [_block_config(), _block_config(num_experts=3, top_k=2),
               _block_config(num_experts=4, top_k=1, num_shared_experts=1)]
    for label, cfg in zip(_labels(descriptions), configs):
        with torch.random.fork_rng(devices=[]):
            block = _randomise(Block(cfg, 0), g, 0.3)
        before = _state_copy(block)
        x = torch.randn(2, 6, cfg.d_model, generator=g)                       # (B, T, d)
        copy_ = learner(label, block)
        if not _same_state(block, before):
            raise _Mistake(f"{label}: your function changed the block it was given.",
                           "copy first (copy.deepcopy(block)); the old block must stay as it was")
        if copy_ is block:
            raise _Mistake(f"{label}: you returned the block you were given.", "return a new block (a deep copy)")
        if not isinstance(copy_, nn.Module):
            raise _Mistake(f"{label}: return a block (an nn.Module), got {type(copy_).__name__}.")
        answer = _call_module(copy_, x, label)
        _require_shape(answer, x.shape, label)
        new_state = copy_.state_dict()
        if not _close(answer, x, atol=1e-6):
            zeroed = {name for name, t in new_state.items() if t.numel() and not t.any()}
            attention_silent = any(n.endswith("attention.wo.weight") for n in zeroed)
            w2_names = [n for n in before if n.endswith("w2.weight")]
            ffn_silent = w2_names and all(n in zeroed for n in w2_names)
            if ffn_silent and not attention_silent:
                hint = "attention still adds its output to the residual stream: zero its output projection wo"
            elif attention_silent and not ffn_silent:
                hint = ("the FFN still adds its output: zero its down projection w2 (every expert's and every "
                        "shared expert's, in an MoE block)")
            elif any(n.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")) for n in zeroed):
                hint = ("zeroing the *input* projections does not silence a sub-layer (zero scores still average v); "
                        "zero the output projections wo and w2")
            else:
                hint = "y = x + Attn(norm(x)) + FFN(norm(h)): make both added terms zero"
            raise _Mistake(f"{label}: your block does not return its input unchanged.", hint)
        if new_state.keys() != before.keys():
            raise _Mistake(f"{label}: your block's weights have other names than the block's.",
                           "a copy of the same block (copy.deepcopy), not a new kind of module")
        for name, tensor in new_state.items():
            if _is_output_projection(name):
                continue
            if not torch.equal(tensor, before[name]):
                raise _Mistake(f"{label}: it is the identity, but {name} is not a copy of the old block's.",
                               "zero only the output projections (wo, every w2); the copied weights are the new "
                               "block's head start once wo and w2 start to learn")
        for (name, new), old in zip(copy_.named_parameters(), block.parameters()):
            if new.data_ptr() == old.data_ptr():
                raise _Mistake(f"{label}: the new block shares {name} with the old one.",
                               "copy.deepcopy the block: training one must not change the other")
    return f"{len(configs)} hidden blocks (dense, MoE, shared expert): identity, old block untouched, a true copy."


def _split_reference(ffn: FeedForward, parts: int) -> list[FeedForward]:
    d_ff, d_model = ffn.w1.weight.shape
    pieces = []
    for w1, w3, w2 in zip(ffn.w1.weight.chunk(parts, 0), ffn.w3.weight.chunk(parts, 0), ffn.w2.weight.chunk(parts, 1)):
        piece = FeedForward(d_model, d_ff // parts)
        with torch.no_grad():
            piece.w1.weight.copy_(w1), piece.w3.weight.copy_(w3), piece.w2.weight.copy_(w2)
        pieces.append(piece)
    return pieces


def _split_error_hint(error: Exception) -> str:
    if "size" in str(error) or "shape" in str(error):
        return "w1 and w3 are (d_ff, d_model): slice their rows; w2 is (d_model, d_ff): slice its *columns*"
    return ""


@_exercise("05_bilateral_growth", "split_ffn(ffn, parts): cut an FFN's hidden units into `parts` smaller FFNs "
           "that add up to it", _split_error_hint)
def _check_split_ffn(learner) -> str:
    g = _generator(503)
    descriptions = ["2 parts", "3 parts", "1 part: a copy", "4 parts of a narrow FFN"]
    cases = [(_ffn(8, 12, g), 2), (_ffn(6, 12, g), 3), (_ffn(8, 12, g), 1), (_ffn(5, 8, g), 4)]
    for label, (ffn, parts) in zip(_labels(descriptions), cases):
        d_ff, d_model = ffn.w1.weight.shape
        before = _state_copy(ffn)
        x = torch.randn(7, d_model, generator=g)                              # (N, d)
        with torch.no_grad():
            expected = ffn(x)                                                 # (N, d)
        pieces = learner(label, ffn, parts)
        if not _same_state(ffn, before):
            raise _Mistake(f"{label}: your function changed the FFN it was given.", "copy slices into new FFNs")
        if not isinstance(pieces, (list, tuple, nn.ModuleList)) or len(pieces) != parts:
            raise _Mistake(f"{label}: return a list of {parts} FFNs, got "
                           f"{len(pieces) if hasattr(pieces, '__len__') else type(pieces).__name__}.",
                           "one FeedForward per part")
        for piece in pieces:
            w1 = getattr(piece, "w1", None)
            if isinstance(w1, nn.Linear) and tuple(w1.weight.shape) != (d_ff // parts, d_model):
                raise _Mistake(f"{label}: a piece has w1 of shape {tuple(w1.weight.shape)}, expected "
                               f"{(d_ff // parts, d_model)}.", "equal slices of d_ff // parts hidden units each")
        answer = sum(_call_module(piece, x, label) for piece in pieces)       # (N, d)
        _require_shape(answer, expected.shape, label)
        if _close(answer, expected, atol=1e-5):
            continue
        reference = _split_reference(ffn, parts)
        with torch.no_grad():
            variants = [
                ("the slices add up to the whole with no rescaling (split_experts multiplies w2 by m only to undo "
                 "the router's p / m)", lambda: parts * expected),
                ("the slices add up to the whole: don't divide them by the number of parts",
                 lambda: expected / parts),
                ("hidden unit u is row u of w1 and w3 *and* column u of w2: slice all three the same way",
                 lambda: sum(FeedForward.forward(_swap_w3(piece, other), x)
                             for piece, other in zip(reference, reference[1:] + reference[:1]))),
            ]
        hint = _diagnose(answer, variants, "FFN(x) = sum over hidden units u of w2[:, u] SiLU(w1[u] x) (w3[u] x): "
                                           "each piece takes a block of units", atol=1e-5)
        raise _Mistake(f"{label}: your pieces do not add up to the FFN.", hint)
    return f"{len(cases)} hidden cases: the pieces add up to the FFN (tolerance 1e-5)."


def _swap_w3(piece: FeedForward, other: FeedForward) -> FeedForward:
    """``piece`` with ``other``'s w3: the mistake of slicing w3 differently from w1."""
    mixed = copy.deepcopy(piece)
    with torch.no_grad():
        mixed.w3.weight.copy_(other.w3.weight)
    return mixed


# ============================================================ 06 · three phases
def _transition_models():
    """(description, before, after, tolerance, expected ok) for the transition check."""
    tiny = preset("tiny").model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(601)
        dense = GPT(tiny).eval()
        moe = upcycle(dense, 4, 2, seed=1)
        grown = grow(moe, 2, 1, seed=2, verbose=False)
        sharp = copy.deepcopy(dense)
        with torch.no_grad():
            sharp.lm_head.weight.mul_(30.0)                                   # confident and wrong: loss goes up
        dropout = GPT(tiny.replace(dropout=0.5)).train()
        twin = copy.deepcopy(dropout).train()
    return [
        ("upcycling a dense model", dense, moe, 1e-3),
        ("bilateral growth of the MoE", moe, grown, 1e-3),
        ("a broken transition: the loss goes up", dense, sharp, 1e-3),
        ("a transition after which the loss goes down", sharp, dense, 1e-3),
        ("models in training mode, with dropout", dropout, twin, 1e-3),
        ("a large jump under a large tolerance", dense, sharp, 100.0),
    ]


@_exercise("06_three_phases", "transition_jump(before, after, idx, targets, tolerance): (loss after - loss before, "
           "|jump| < tolerance)")
def _check_transition_jump(learner) -> str:
    cases = _transition_models()
    vocab = preset("tiny").model.vocab_size
    idx = torch.randint(0, vocab, (2, 16), generator=_generator(602))        # (B, T)
    targets = torch.randint(0, vocab, (2, 16), generator=_generator(603))
    for label, (_, before, after, tolerance) in zip(_labels([c[0] for c in cases]), cases):
        modes = before.training, after.training
        expected = preservation_report(before, after, idx, targets).jump
        expected_ok = abs(expected) < tolerance
        out = learner(label, before, after, idx.clone(), targets.clone(), tolerance)
        if (before.training, after.training) != modes:
            raise _Mistake(f"{label}: your function left a model in another mode than it found it.",
                           "put each model back in the mode it was in (was_training = model.training ... "
                           "model.train(was_training))")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise _Mistake(f"{label}: return a pair (jump, ok), got {type(out).__name__}.")
        jump = _number(out[0], label, "jump")
        if not math.isclose(jump, expected, rel_tol=1e-5, abs_tol=1e-6):
            with torch.no_grad():
                aux = after(idx, targets).aux_loss.item() - before(idx, targets).aux_loss.item()
            if math.isclose(jump, -expected, rel_tol=1e-5, abs_tol=1e-6):
                hint = "jump = loss after - loss before (the sign says whether the loss went up)"
            elif math.isclose(jump, abs(expected), rel_tol=1e-5, abs_tol=1e-6):
                hint = "return the signed jump; the check compares its absolute value with the tolerance"
            elif modes[0] and modes[1]:
                hint = "evaluate both models in eval mode (model.eval()): dropout makes a training-mode loss random"
            elif aux and math.isclose(jump, expected + aux, rel_tol=1e-4, abs_tol=1e-6):
                hint = "compare the cross-entropy only (output.loss): leave the MoE's aux loss out"
            else:
                hint = "run both models on the same idx and targets and subtract their cross-entropy losses"
            raise _Mistake(f"{label}: your jump differs from moe_helpers.growth.preservation_report.", hint)
        ok = out[1]
        if isinstance(ok, torch.Tensor) and ok.numel() == 1:
            ok = ok.item()
        if not isinstance(ok, bool) and type(ok).__name__ != "bool_":
            raise _Mistake(f"{label}: ok should be a bool, got {type(ok).__name__}.")
        if bool(ok) != expected_ok:
            if tolerance != 1e-3:
                hint = "use the `tolerance` argument rather than a fixed 0.001"
            elif expected < 0:
                hint = "a large *drop* of the loss is a jump too: compare abs(jump) with the tolerance"
            else:
                hint = "ok is True when abs(jump) < tolerance"
            raise _Mistake(f"{label}: the jump is right, but ok is not.", hint)
    return f"{len(cases)} hidden transitions agree with moe_helpers.growth.preservation_report (tolerance 1e-6)."


@_exercise("06_three_phases", "expert_load_share(top_k_experts, num_experts): each expert's share of the "
           "token slots")
def _check_expert_load_share(learner) -> str:
    g = _generator(604)
    never = torch.rand(12, 5, generator=g).topk(2, -1).indices                # expert 5 is never chosen
    descriptions = ["32 tokens, top-2 of 4", "top-1 of 3", "the last expert receives no slots",
                    "every slot goes to one expert"]
    cases = [(torch.rand(32, 4, generator=g).topk(2, -1).indices, 4),
             (torch.randint(0, 3, (10, 1), generator=g), 3), (never, 6), (torch.full((8, 1), 2), 5)]
    for label, (experts, E) in zip(_labels(descriptions), cases):
        expected = count_per_expert(experts, E).to("cpu", torch.float64) / experts.numel()   # (E,) on the CPU
        answer = _tensor(learner(label, experts.clone(), E), label)
        _require_shape(answer, (E,), label,
                       hint="one share per expert, also for experts that receive nothing (bincount's minlength)")
        if _close(answer, expected):
            continue
        counts = count_per_expert(experts, E).to("cpu", torch.float64)
        variants = [
            ("shares of the N·k slots: they sum to 1", lambda: counts / experts.shape[0]),
            ("divide the counts by the number of slots to get shares", lambda: counts),
            ("count every slot, not only each token's first choice",
             lambda: count_per_expert(experts[:, 0], E).to("cpu", torch.float64) / experts.shape[0]),
        ]
        hint = _diagnose(answer, variants, "count the slots of each expert, then divide by the number of slots")
        raise _Mistake(f"{label}: your shares differ from moe_helpers.moe.RoutingStats.load_share.", hint)
    return f"{len(cases)} hidden cases agree with moe_helpers.moe.RoutingStats.load_share (tolerance 1e-6)."


# ===================================================== 07 · inference and export
_BYTE_DTYPES = {1: torch.int8, 2: torch.bfloat16, 4: torch.float32, 8: torch.float64}


def _kv_cache_cases() -> list[tuple[str, ModelConfig, int, int, int]]:
    """(description, config, batch_size, seq_len, bytes_per_value) for the KV-cache check."""
    laptop_moe = preset("laptop").phase_configs()[1]
    long_context = dict(max_seq_len=32_768)
    return [
        ("the laptop MoE, one sequence of 100 tokens, float32", laptop_moe, 1, 100, 4),
        ("the laptop MoE, 3 sequences of 1 000 tokens (past its window), bfloat16", laptop_moe, 3, 1000, 2),
        ("grouped-query attention and an explicit head_dim, 5 sequences of 17 tokens, one byte a value",
         preset("laptop").model.replace(n_kv_heads=2, head_dim=48), 5, 17, 1),
        ("Mixtral-8x7B, 16 sequences of 32k tokens, bfloat16",
         published_model("Mixtral-8x7B").config.replace(**long_context), 16, 32_768, 2),
        ("Qwen3-30B-A3B (head_dim 128 on a narrower model), 2 sequences of 5 000 tokens, bfloat16",
         published_model("Qwen3-30B-A3B").config.replace(**long_context), 2, 5000, 2),
        ("the tiny model, 2 sequences exactly as long as its window, float64", preset("tiny").model, 2, 64, 8),
    ]


def _kv_bytes_with(cfg: ModelConfig, batch_size: int, seq_len: int, bytes_per_value: int,
                   mistake: str | None = None) -> int:
    """Bytes of the KV cache by formula, or with one typical ``mistake`` (see ``_KV_HINTS``)."""
    heads = cfg.n_heads if mistake == "all_heads" else cfg.kv_heads
    head_dim = cfg.d_model // cfg.n_heads if mistake == "head_dim" else cfg.head_size
    width = cfg.d_model if mistake == "d_model" else heads * head_dim              # values per position and layer
    positions = seq_len if mistake == "no_window" else min(seq_len, cfg.max_seq_len)
    tensors = 1 if mistake == "keys_only" else 2                                     # keys and values
    layers = 1 if mistake == "one_layer" else cfg.n_layers
    batch = 1 if mistake == "one_sequence" else batch_size
    return tensors * layers * batch * width * positions * bytes_per_value


_KV_HINTS = {
    "keys_only": "every layer caches keys *and* values",
    "no_window": "the course's cache slides: past max_seq_len it keeps only the latest max_seq_len positions",
    "all_heads": "the cache keeps only the cfg.kv_heads key/value heads, not one per query head "
                 "(grouped-query attention)",
    "d_model": "a position's keys are kv_heads x head_size values, which need not be d_model",
    "head_dim": "each key/value head has cfg.head_size values, which need not be d_model / n_heads",
    "one_layer": "every layer keeps its own keys and values: multiply by n_layers",
    "one_sequence": "every sequence of the batch has its own cache: multiply by batch_size",
}


@_exercise("07_inference_and_hf", "kv_cache_bytes_by_hand(cfg, batch_size, seq_len, bytes_per_value): the bytes "
           "of the KV cache, by formula", _block_error_hint)
def _check_kv_cache_bytes_by_hand(learner) -> str:
    cases = _kv_cache_cases()
    for label, (_, cfg, batch_size, seq_len, value_bytes) in zip(_labels([c[0] for c in cases]), cases):
        expected = kv_cache_bytes(cfg, batch_size, seq_len, _BYTE_DTYPES[value_bytes])
        answer = _number(learner(label, cfg, batch_size, seq_len, value_bytes), label)
        if answer == expected:
            continue
        hint = next((text for mistake, text in _KV_HINTS.items()
                     if answer == _kv_bytes_with(cfg, batch_size, seq_len, value_bytes, mistake)),
                    "2 (keys and values) x layers x batch x key/value heads x head size x positions kept x bytes")
        raise _Mistake(f"{label}: your count differs from moe_helpers.accounting.kv_cache_bytes.", hint)
    return f"{len(cases)} hidden cases agree with moe_helpers.accounting.kv_cache_bytes, exactly."


def _attend_reference(attention: Attention, x_new, past_keys, past_values):
    """(output, keys, values) of ``Attention.forward`` for one new token after a ``LayerKVCache``
    that holds ``past_keys`` and ``past_values`` (and keeps every position)."""
    T = past_keys.shape[2]
    cache = LayerKVCache(T + 1)
    if T:
        cache.keys, cache.values, cache.seen = past_keys.clone(), past_values.clone(), T
    with torch.no_grad():
        output = attention(x_new, cache)                                      # (B, 1, d_model)
    return output, cache.keys, cache.values


def _attend_by_hand(attention: Attention, x_new, past_keys, past_values, *, rotate_query=True, query_shift=0,
                    rotate_key=True, key_shift=0, rotate_values=False, prepend=False, see_itself=True,
                    tile=False, scale=None, causal=False, project=True):
    """One new token attending to the cache, step by step as in notebook 07 section 1.1; each
    keyword makes one typical mistake."""
    B, T = x_new.shape[0], past_keys.shape[2]
    H, H_kv, hd = attention.n_heads, attention.n_kv_heads, attention.head_dim

    def rotate(t, position):                                                  # (B, heads, 1, hd)
        return apply_rope(t, attention.rope_cos[position:position + 1], attention.rope_sin[position:position + 1])

    def expand(t):                                                            # (B, H_kv, L, hd) -> (B, H, L, hd)
        return t.repeat(1, H // H_kv, 1, 1) if tile else t.repeat_interleave(H // H_kv, dim=1)

    with torch.no_grad():
        q = attention.wq(x_new).view(B, 1, H, hd).transpose(1, 2)             # (B, H, 1, hd)
        k = attention.wk(x_new).view(B, 1, H_kv, hd).transpose(1, 2)          # (B, H_kv, 1, hd)
        v = attention.wv(x_new).view(B, 1, H_kv, hd).transpose(1, 2)
        q = rotate(q, T + query_shift) if rotate_query else q
        k = rotate(k, T + key_shift) if rotate_key else k
        v = rotate(v, T) if rotate_values else v
        keys = torch.cat([k, past_keys] if prepend else [past_keys, k], dim=2)          # (B, H_kv, T + 1, hd)
        values = torch.cat([v, past_values] if prepend else [past_values, v], dim=2)
        seen_keys, seen_values = (keys, values) if see_itself else (past_keys, past_values)
        scores = q @ expand(seen_keys).transpose(-2, -1) * (1 / math.sqrt(hd) if scale is None else scale)
        if causal:                                # is_causal=True with one query: only the first key stays
            scores[..., 1:] = float("-inf")
        out = (scores.softmax(-1) @ expand(seen_values)).transpose(1, 2).reshape(B, 1, H * hd)   # (B, 1, H*hd)
        return (attention.wo(out) if project else out), keys, values


def _attend_error_hint(error: Exception) -> str:
    text = str(error)
    if "except in dimension" in text:
        return ("append along the positions: torch.cat([past_keys, k], dim=2), with the new k shaped "
                "(B, n_kv_heads, 1, head_dim)")
    if "must match" in text or "size of tensor" in text:
        return ("the cache has n_kv_heads heads: repeat each one n_heads // n_kv_heads times along dim 1 "
                "before attending")
    if "invalid for input of size" in text:
        return "split into heads with the module's sizes: attention.n_heads, attention.n_kv_heads, attention.head_dim"
    return ""


@_exercise("07_inference_and_hf", "attend_with_cache(attention, x_new, past_keys, past_values): one new token's "
           "attention over a KV cache; (output, keys, values)", _attend_error_hint)
def _check_attend_with_cache(learner) -> str:
    g = _generator(701)
    descriptions = ["4 heads, 4 key/value heads, 5 cached tokens",
                    "grouped-query: 4 query heads, 2 key/value heads, a batch of 3, 20 cached tokens",
                    "one key/value head for 8 query heads, one cached token",
                    "head_dim 16 on a 24-wide model, the last position of the rotary tables",
                    "an empty cache: the first token"]
    shapes = [  # (d_model, H, H_kv, hd, max_seq_len, B, T cached)
        (16, 4, 4, 4, 16, 1, 5), (32, 4, 2, 8, 32, 3, 20), (32, 8, 1, 4, 16, 2, 1), (24, 4, 2, 16, 32, 1, 31),
        (16, 2, 1, 8, 16, 2, 0)]
    for label, (d, H, H_kv, hd, max_len, B, T) in zip(_labels(descriptions), shapes):
        attention = _randomise(Attention(d, H, H_kv, hd, max_len), g, 0.3).eval()
        x_new = torch.randn(B, 1, d, generator=g)                             # (B, 1, d_model)
        past_keys = torch.randn(B, H_kv, T, hd, generator=g)                  # (B, H_kv, T, hd), rotated
        past_values = torch.randn(B, H_kv, T, hd, generator=g)
        expected, expected_keys, expected_values = _attend_reference(attention, x_new, past_keys, past_values)
        kept = past_keys.clone(), past_values.clone()
        out = learner(label, attention, x_new.clone(), past_keys, past_values)
        if not (torch.equal(past_keys, kept[0]) and torch.equal(past_values, kept[1])):
            raise _Mistake(f"{label}: your function changed past_keys or past_values.",
                           "torch.cat builds new tensors: leave the cached ones as they are")
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise _Mistake(f"{label}: return a triple (output, keys, values), got {type(out).__name__}.")
        output, keys, values = (_tensor(t, label, what) for t, what in zip(out, ("output", "keys", "values")))

        def mistake(part, **kind):
            return lambda: _attend_by_hand(attention, x_new, past_keys, past_values, **kind)[part]

        if H != H_kv and tuple(keys.shape) == (B, H, T + 1, hd):
            raise _Mistake(f"{label}: keys has shape {tuple(keys.shape)}, expected {tuple(expected_keys.shape)}.",
                           "the cache keeps the n_kv_heads key/value heads: repeat them for the query heads "
                           "only to attend, not in what you return")
        _require_shape(keys, expected_keys.shape, label, "keys",
                       "append the new key after the cached ones, along the positions (dim 2)")
        if not _close(keys, expected_keys, atol=1e-5):
            position = "rotate the new key by its own position, T = past_keys.shape[2] (positions count from 0)"
            hint = _diagnose(keys, [
                ("keys are cached *after* rotation: rotate the new key by position T before appending it",
                 mistake(1, rotate_key=False)),
                (position, mistake(1, key_shift=-1)), (position, mistake(1, key_shift=1)),
                ("append the new key *after* the cached ones: position T comes last", mistake(1, prepend=True)),
            ], "keys = the cached keys, then the new token's key (wk x_new, split into heads, rotated by position T)",
                atol=1e-5)
            raise _Mistake(f"{label}: your keys differ from the cache's (moe_helpers.layers.LayerKVCache).", hint)
        _require_shape(values, expected_values.shape, label, "values",
                       "append the new value after the cached ones, along the positions (dim 2)")
        if not _close(values, expected_values, atol=1e-5):
            hint = _diagnose(values, [
                ("values are never rotated: only queries and keys carry the position", mistake(2, rotate_values=True)),
                ("append the new value *after* the cached ones: position T comes last", mistake(2, prepend=True)),
            ], "values = the cached values, then wv x_new split into heads (no rotation)", atol=1e-5)
            raise _Mistake(f"{label}: your values differ from the cache's (moe_helpers.layers.LayerKVCache).", hint)
        _require_shape(output, expected.shape, label, "the output",
                       "the output projection wo maps the heads back to d_model: (B, 1, d_model)")
        if torch.isnan(output).any():
            raise _Mistake(f"{label}: your output contains NaN.",
                           "the new token attends to itself too: append its key and value, then attend")
        if _close(output, expected, atol=1e-5):
            continue
        query = "the query sits at position T too: rotate it by the new key's angles"
        hint = _diagnose(output, [
            ("rotate the query by position T too, as the new key", mistake(0, rotate_query=False)),
            (query, mistake(0, query_shift=-1)), (query, mistake(0, query_shift=1)),
            ("query head h reads key/value head h // (n_heads / n_kv_heads): repeat each head in place "
             "(0, 0, 1, 1), don't tile the heads (0, 1, 0, 1)", mistake(0, tile=True)),
            ("scale the scores by 1 / sqrt(head_dim) before the softmax", mistake(0, scale=1.0)),
            ("the scale is 1 / sqrt(head_dim), not 1 / head_dim", mistake(0, scale=1 / hd)),
            ("no causal mask here: the cache holds only the past, and is_causal=True with a single query "
             "lets it see only the first key", mistake(0, causal=True)),
            ("the new token attends to itself too: append its key and value, then attend",
             mistake(0, see_itself=False)),
            ("finish with the output projection wo", mistake(0, project=False)),
        ], "softmax(q K^T / sqrt(head_dim)) V over the T + 1 keys, each key/value head repeated for its "
           "query heads, then wo", atol=1e-5)
        raise _Mistake(f"{label}: your output differs from Attention.forward with a LayerKVCache.", hint)
    return (f"{len(shapes)} hidden cases agree with moe_helpers.layers.Attention and LayerKVCache "
            "(tolerance 1e-5).")


_GENERATE_CONFIG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                               max_seq_len=16, num_experts=4, top_k=2)


def _greedy_first_position(model: GPT, prompt, new_tokens):
    """Greedy decoding with the cache that reads the *first* position's logits: a typical mistake."""
    cache, idx, pending = model.new_kv_cache(), prompt, prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            pending = model(pending, cache=cache).logits[:, 0].argmax(-1, keepdim=True)   # (B, 1)
            idx = torch.cat([idx, pending], dim=1)
    return idx


@_exercise("07_inference_and_hf", "greedy_generate(model, prompt, new_tokens): greedy decoding with the KV cache, "
           "the prompt read once and one token a step")
def _check_greedy_generate(learner) -> str:
    g = _generator(702)
    model = _randomise(GPT(_GENERATE_CONFIG), g, 0.3).eval()
    vocab, window = _GENERATE_CONFIG.vocab_size, _GENERATE_CONFIG.max_seq_len
    descriptions = ["one 5-token prompt, 8 new tokens", "a batch of two prompts, 6 new tokens",
                    f"past max_seq_len: 6 prompt tokens and 20 new ones in a {window}-token window",
                    "one new token", "zero new tokens: the prompt itself"]
    cases = [(torch.randint(0, vocab, (1, 5), generator=g), 8), (torch.randint(0, vocab, (2, 4), generator=g), 6),
             (torch.randint(0, vocab, (1, 6), generator=g), 20), (torch.randint(0, vocab, (2, 3), generator=g), 1),
             (torch.randint(0, vocab, (1, 4), generator=g), 0)]
    for label, (prompt, new_tokens) in zip(_labels(descriptions), cases):
        B, P = prompt.shape
        expected = model.generate(prompt, new_tokens, temperature=0)          # (B, P + new_tokens)
        calls = []                                                            # (tokens read, cache) per call

        def record(module, args, kwargs):
            idx = args[0] if args else kwargs.get("idx")
            cache = args[2] if len(args) > 2 else kwargs.get("cache")
            calls.append((idx.shape[-1] if isinstance(idx, torch.Tensor) else 0, cache))

        handle = model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            answer = _tensor(learner(label, model, prompt.clone(), new_tokens), label)
        finally:
            handle.remove()
        if tuple(answer.shape) == (B, new_tokens) and new_tokens and torch.equal(answer.long(), expected[:, P:]):
            raise _Mistake(f"{label}: you returned only the new tokens.", "return the prompt followed by the new tokens")
        if new_tokens == 0 and tuple(answer.shape) != (B, P):
            raise _Mistake(f"{label}: you returned shape {tuple(answer.shape)}, expected {(B, P)}.",
                           "new_tokens = 0 asks for no new token: return the prompt as it is (don't pick a token "
                           "before the loop)")
        _require_shape(answer, expected.shape, label, hint="the prompt followed by new_tokens tokens: "
                                                           "the loop picks one token a step, new_tokens times")
        caches = [cache for _, cache in calls if cache is not None]
        if not torch.equal(answer.long(), expected):
            wrong = (answer.long() != expected).nonzero()[0, 1].item()
            if len({id(cache) for cache in caches}) > 1:
                hint = ("make one cache before the loop (model.new_kv_cache()) and keep it: a fresh cache has "
                        "forgotten the text")
            elif caches and any(read > 1 for read, _ in calls[1:]):
                hint = "the cache already holds the text: after the prompt, feed it only the token just picked"
            elif torch.equal(answer.long(), _greedy_first_position(model, prompt, new_tokens)):
                hint = "the next token comes from the logits of the last position read (logits[:, -1])"
            else:
                hint = ("greedy: each step appends logits[:, -1].argmax(-1) and feeds that token to the same cache, "
                        "which slides by itself past max_seq_len")
            raise _Mistake(f"{label}: your tokens differ from model.generate(..., temperature=0) from "
                           f"position {wrong} on.", hint)
        read, wanted = sum(read for read, _ in calls), (P + new_tokens - 1 if new_tokens else 0)
        if read != wanted:
            if not caches:
                hint = ("the tokens are right, but the model re-read the text: pass the cache, "
                        "model(idx, cache=cache), and feed it the prompt once, then only the new token")
            elif len({id(cache) for cache in caches}) > 1:
                hint = ("make one cache before the loop (model.new_kv_cache()) and keep it: with a fresh cache "
                        "every step, the model re-reads the whole text")
            else:
                hint = "with the cache the model reads the prompt once, then only the token just picked"
            raise _Mistake(f"{label}: the model read {read} tokens in {len(calls)} calls for {new_tokens} new "
                           f"tokens after a {P}-token prompt.", hint)
    return (f"{len(cases)} hidden cases: the tokens of moe_helpers.model.GPT.generate(temperature=0), the prompt "
            "read once and one token a step.")


# ========================================================= 08 · scaling out
def _send_matrix_bytes(send_matrix: torch.Tensor, d_model: int, bytes_per_value: int) -> int:
    """Bytes by ``ExpertParallelRoutingStats.bytes_sent``, the statistics of an expert-parallel pass."""
    W = send_matrix.shape[0]
    stats = ExpertParallelRoutingStats(aux_loss=torch.zeros(()), tokens_per_expert=send_matrix.sum(0),
                                       mean_prob=torch.full((W,), 1 / W), top_k_experts=torch.zeros(0, 1),
                                       dropped_slots=torch.zeros(()), send_matrix=send_matrix)
    return stats.bytes_sent(d_model, bytes_per_value)


@_exercise("08_scaling_out", "bytes_sent(send_matrix, d_model, bytes_per_value): the bytes an expert-parallel MoE "
           "layer's forward pass sends between ranks")
def _check_bytes_sent(learner) -> str:
    g = _generator(801)
    descriptions = ["4 ranks, uneven traffic, float64 vectors of 16", "8 ranks, DeepSeek-V3's width, bfloat16",
                    "3 ranks: everything stays on its rank", "one rank: nothing travels",
                    "2 ranks, traffic one way only"]
    cases = [(torch.randint(150, 350, (4, 4), generator=g), 16, 8), (torch.randint(0, 1000, (8, 8), generator=g), 7168, 2),
             (torch.diag(torch.tensor([5, 7, 9])), 4096, 2), (torch.tensor([[3]]), 16, 4),
             (torch.tensor([[4, 0], [10, 6]]), 8, 4)]
    for label, (matrix, d, b) in zip(_labels(descriptions), cases):
        expected = _send_matrix_bytes(matrix, d, b)
        answer = _number(learner(label, matrix.clone(), d, b), label)
        if answer == expected:
            continue
        W, total = matrix.shape[0], int(matrix.sum())
        off = total - int(matrix.diagonal().sum())                            # slots that left their rank
        variants = [
            ("every slot that leaves its rank comes back with its result: count dispatch and combine",
             [off * d * b]),
            ("the diagonal never leaves its rank: count only the off-diagonal slots", [2 * total * d * b]),
            ("the diagonal never leaves its rank, and every slot that leaves comes back (dispatch and combine)",
             [total * d * b]),
            ("each slot is a d_model-vector of bytes_per_value bytes", [2 * off, 2 * off * d, 2 * off * b]),
            ("count the slots this matrix sends, not the expectation for uniform routing",
             [2 * total * d * b * (1 - 1 / W)]),
            ("count every off-diagonal slot, both directions: rank s to rank d and d to s are different sends",
             [2 * int(matrix.triu(1).sum()) * d * b, 2 * int(matrix.tril(-1).sum()) * d * b]),
            ("all ranks together, not per rank", [2 * off * d * b / W]),
        ]
        hint = next((text for text, values in variants if any(math.isclose(answer, v) for v in values)),
                    "2 x (slots off the diagonal) x d_model x bytes_per_value")
        raise _Mistake(f"{label}: your bytes differ from ExpertParallelRoutingStats.bytes_sent "
                       "(moe_helpers.parallel).", hint)
    return f"{len(cases)} hidden send matrices agree with moe_helpers.parallel's bytes_sent, exactly."


def _rank_holding(num_experts: int, ranks: int) -> list[int]:
    """The rank of every expert as ``ExpertParallelMoE`` lays them out: rank r keeps
    ``experts_per_rank = E // W`` experts from ``first_expert = r * experts_per_rank``."""
    experts_per_rank = num_experts // ranks
    return [rank for rank in range(ranks) for _ in range(experts_per_rank)]


@_exercise("08_scaling_out", "rank_of_expert(expert, num_experts, ranks): the rank that holds an expert under "
           "ExpertParallelMoE's layout")
def _check_rank_of_expert(learner) -> str:
    layouts = [(8, 4), (8, 1), (8, 8), (256, 64), (12, 3), (6, 2)]
    descriptions = ["8 experts over 4 ranks (section 2)", "8 experts on a single rank", "one expert per rank",
                    "DeepSeek-V3: 256 experts over 64 ranks", "12 experts over 3 ranks", "6 experts over 2 ranks"]
    for label, (E, W) in zip(_labels(descriptions), layouts):
        expected = _rank_holding(E, W)                                        # the rank of each expert
        answers = [_number(learner(label, expert, E, W), label, "the rank") for expert in range(E)]
        if answers == expected:
            continue
        expert = next(e for e, (answer, rank) in enumerate(zip(answers, expected)) if answer != rank)
        per_rank, experts = E // W, range(E)
        variants = [
            ("that deals the experts out in turn (round-robin); ExpertParallelMoE gives each rank a "
             "contiguous block of E / W experts", [e % W for e in experts]),
            ("divide by the number of experts each rank holds (E / W), not by the number of ranks",
             [e // W for e in experts]),
            ("ranks are numbered from 0", [e // per_rank + 1 for e in experts]),
            ("a rank is a whole number: use floor division (//)", [e / per_rank for e in experts]),
            ("expert 0 is on rank 0 and each rank holds E / W consecutive experts: no rounding up",
             [-(-e // per_rank) for e in experts]),
            ("expert 0 is on rank 0 and each rank holds E / W consecutive experts: no rounding up",
             [(e + 1) // per_rank for e in experts]),
        ]
        hint = next((text for text, values in variants if answers == values),
                    "rank r holds experts r * E/W ... (r + 1) * E/W - 1")
        raise _Mistake(f"{label}: expert {expert} is not on rank {answers[expert]}.", hint)
    return (f"{len(layouts)} hidden layouts, every expert: the same ranks as moe_helpers.parallel.ExpertParallelMoE "
            "gives them.")


@_exercise("08_scaling_out", "all_to_all_limit_mb(tokens, top_k, d_model, bytes_per_value): the MB one MoE layer's "
           "forward pass sends as ranks grow without bound")
def _check_all_to_all_limit_mb(learner) -> str:
    descriptions = ["1 000 tokens, top-3, d_model 64, float32", "Mixtral-8x7B: 32k tokens, top-2, bfloat16",
                    "DeepSeek-V3: 32k tokens, top-8, bfloat16", "one token, top-1, d_model 16, float64"]
    cases = [(1000, 3, 64, 4), (32_768, 2, 4096, 2), (32_768, 8, 7168, 2), (1, 1, 16, 8)]
    for label, (tokens, k, d, b) in zip(_labels(descriptions), cases):
        expected = all_to_all_bytes(tokens, k, d, b, math.inf) / 1e6          # 1 - 1/ranks -> 1
        answer = _number(learner(label, tokens, k, d, b), label)
        if math.isclose(answer, expected, rel_tol=1e-6):
            continue
        variants = [
            ("every slot travels twice: to its expert's rank (dispatch) and back with the result (combine)",
             expected / 2),
            ("each token sends top_k slots, one to each of its experts", expected / k),
            ("each value takes bytes_per_value bytes", expected / b),
            ("each slot is a d_model-vector", expected / d),
            ("MB here are 10^6 bytes, not 2^20", expected * 1e6 / 2**20),
            ("the answer is in MB (10^6 bytes), not in bytes", expected * 1e6),
            ("the answer is in MB, not in GB", expected / 1e3),
            ("1 - 1/ranks tends to 1, not 0: in the limit nearly every slot leaves its rank", 0.0),
        ]
        variants += [(f"that is the value for {W} ranks: what does 1 - 1/ranks tend to as ranks grows?",
                      expected * (1 - 1 / W)) for W in range(2, 65)]
        hint = next((text for text, value in variants if math.isclose(answer, value, rel_tol=1e-6)), None)
        if hint is None and expected * 0.99 < answer < expected:
            hint = "nearly: take the limit exactly, 1 - 1/ranks tends to 1 (no need for a very large ranks)"
        raise _Mistake(f"{label}: your value differs from moe_helpers.accounting.all_to_all_bytes as ranks "
                       "grow without bound.", hint or "2 x tokens x top_k x d_model x bytes_per_value, in MB")
    return (f"{len(cases)} hidden cases agree with moe_helpers.accounting.all_to_all_bytes in the limit "
            "(tolerance 1e-6).")
