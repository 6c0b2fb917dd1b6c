"""Growing a model without changing what it computes.

Four function-preserving operators, each returning a *new* model and leaving
its input untouched:

* ``upcycle``       dense -> MoE: every expert a copy of the dense FFN
                    (Komatsuzaki et al. 2023, "Sparse Upcycling");
* ``grow_width``    d_model, heads and FFN width x n: the residual stream
                    becomes n copies of itself (Net2Net, Chen et al. 2016; bert2BERT);
* ``grow_depth``    new blocks whose output projections are zero, so each is
                    the identity on the residual stream (LLaMA Pro's block
                    expansion, Wu et al. 2024);
* ``split_experts`` each expert cut into finer experts (fine-grained MoE, DeepSeekMoE).

``grow`` does width and depth at once ("bilateral growth"), and
``preservation_report`` measures how well the function was preserved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig, insertion_plan
from .layers import upcast
from .model import GPT


def _check_factor(name: str, factor) -> None:
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {factor!r}")


def _new_model_like(model: GPT, cfg: ModelConfig, state: dict) -> GPT:
    """A ``GPT(cfg)`` on ``model``'s device and dtype, holding ``state``."""
    reference = next(model.parameters())
    cuda_devices = [reference.device] if reference.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.device(reference.device):
        grown = GPT(cfg).to(reference.dtype)     # its random init is overwritten; the caller's RNG is untouched
    grown.load_state_dict(state)
    grown.train(model.training)
    return grown


def _state(model: GPT) -> dict:
    """A detached copy of the model's weights (so the input model is never touched)."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# ------------------------------------------------------------------ upcycling
@torch.no_grad()
def upcycle(dense: GPT, num_experts: int, top_k: int, renormalize: bool = True,
            router_std: float = 0.02, seed: int = 0) -> GPT:
    """Sparse upcycling: the MoE whose experts are all copies of the dense FFN.

    With renormalised top-k the k routing weights sum to 1, and all experts
    are equal, so every block computes ``sum_i g_i FFN(x) = FFN(x)`` for any
    router: the function is preserved exactly.  The router is new
    (normal, std ``router_std``).  With ``renormalize=False`` the output is
    scaled by the sum of the chosen probabilities instead (a visible jump).
    """
    if dense.cfg.is_moe:
        raise ValueError("upcycle needs a dense model (num_experts=0); this one already has experts")
    _check_factor("num_experts", num_experts)
    cfg = dense.cfg.upcycled(num_experts, top_k).replace(renormalize_top_k=renormalize)
    return _new_model_like(dense, cfg, _upcycled_state(cfg, _state(dense), router_std, seed))


def _upcycled_state(cfg: ModelConfig, old: dict, router_std: float, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in old.items():
        if ".ffn." not in name:
            state[name] = tensor
            continue
        prefix, weight = name.split(".ffn.")                     # "layers.3", "w1.weight"
        for expert in range(cfg.num_experts):
            state[f"{prefix}.ffn.experts.{expert}.{weight}"] = tensor.clone()
    for layer in range(cfg.n_layers):
        router = torch.randn(cfg.num_experts, cfg.d_model, generator=generator) * router_std
        reference = old[f"layers.{layer}.ffn.w1.weight"]
        state[f"layers.{layer}.ffn.router.weight"] = router.to(reference)
        if cfg.bias_update_rate > 0:   # aux-loss-free balancing starts unbiased
            state[f"layers.{layer}.ffn.expert_bias"] = torch.zeros(cfg.num_experts, device=reference.device)
    return state


# ---------------------------------------------------------------------- width
def widen_linear(weight: torch.Tensor, factor: int, copy_outputs: bool = True,
                 noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Widen ``W`` (out x in) for inputs that are ``factor`` copies of the old input.

    Input columns are tiled and divided by ``factor`` so that
    ``W' [x, x, ...] = W x``; output rows are tiled when the output is
    duplicated too.  ``noise`` (relative to W's std) adds a perturbation that
    sums to zero over the copies of each input column (+e on one copy, -e on its
    twin), so the product is unchanged while twin units get different gradients.
    """
    out_copies = factor if copy_outputs else 1
    widened = weight.repeat(out_copies, factor) / factor                 # (out*c, in*factor)
    if noise > 0 and factor > 1:
        rows, cols = widened.shape[0], weight.shape[1]
        compute = upcast(weight)                                         # float32 (float64 stays float64)
        perturbation = torch.randn(rows, factor, cols, generator=generator,
                                   dtype=compute.dtype).to(weight.device)   # the generator lives on the CPU
        perturbation -= perturbation.mean(dim=1, keepdim=True)          # sums to 0 over copies
        scale = noise * compute.std().clamp(min=1e-12)
        widened = (upcast(widened) + scale * perturbation.reshape(rows, factor * cols)).to(weight)
    return widened


@torch.no_grad()
def grow_width(model: GPT, factor: int, noise: float = 0.01, seed: int = 0, verbose: bool = True) -> GPT:
    """Width growth by an integer ``factor``: the residual stream becomes
    ``factor`` copies of itself; heads (key/value heads too) and FFN / expert /
    shared-expert hidden units are duplicated; head_dim is unchanged, so RoPE
    and the 1/sqrt(head_dim) scale are untouched.

    * token embedding and RMSNorm gains: tiled (the RMS of [h, h] is the RMS of h);
    * every other matrix: input columns tiled / factor (+ zero-sum noise),
      output rows tiled where the output is duplicated;
    * router and LM head: input columns tiled / factor, outputs not duplicated,
      no noise on the router so routing decisions stay the same.

    A tied embedding cannot be both tiled (as an input table) and divided (as
    the LM head), so the grown model unties it, and says so.
    """
    _check_factor("factor", factor)
    if not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    cfg = model.cfg.widened(factor)
    if model.cfg.tie_embeddings and verbose:
        print("grow_width: the tied embedding is untied (the LM head becomes its own copy, divided "
              f"by {factor}); tiling a tied table would multiply the logits by {factor}.")
    generator = torch.Generator().manual_seed(seed)
    old = _state(model)
    if model.cfg.tie_embeddings:
        old["lm_head.weight"] = old["tok_embeddings.weight"].clone()
    state = {}
    for name, tensor in old.items():
        if name == "tok_embeddings.weight":
            state[name] = tensor.repeat(1, factor)                       # (V, d*n): copies, not divided
        elif name.endswith(".expert_bias"):                              # (E,): one per expert, unchanged
            state[name] = tensor
        elif tensor.dim() == 1:                                          # RMSNorm gains
            state[name] = tensor.repeat(factor)
        elif name == "lm_head.weight":
            state[name] = widen_linear(tensor, factor, copy_outputs=False, noise=noise, generator=generator)
        elif ".router." in name:
            state[name] = widen_linear(tensor, factor, copy_outputs=False)
        else:
            state[name] = widen_linear(tensor, factor, copy_outputs=True, noise=noise, generator=generator)
    return _new_model_like(model, cfg, state)


# ---------------------------------------------------------------------- depth
def _zero_output_projections(state: dict, prefix: str) -> None:
    """Make block ``prefix`` the identity: zero its attention ``wo`` and every FFN ``w2``."""
    for name in state:
        if name.startswith(prefix) and name.endswith(("attention.wo.weight", "w2.weight")):
            state[name] = torch.zeros_like(state[name])


@torch.no_grad()
def grow_depth(model: GPT, new_layers: int, where: str = "interleave") -> GPT:
    """Insert ``new_layers`` blocks, each a copy of its neighbour with its
    output projections (attention ``wo``, every expert's ``w2``) set to zero.

    A pre-norm block computes ``x + Attn(...)`` and ``h + FFN(...)``; with zero
    output projections both additions add zero: the new block is the identity.
    ``where="interleave"`` puts each new block right after the one it copies,
    spread evenly; ``"top"`` stacks them after the last block.
    """
    plan = insertion_plan(model.cfg.n_layers, new_layers, where)
    cfg = model.cfg.deepened(new_layers, where)
    old = _state(model)
    state = {name: tensor for name, tensor in old.items() if not name.startswith("layers.")}
    seen = set()
    for new_index, source in enumerate(plan):
        for name, tensor in old.items():
            if name.startswith(f"layers.{source}."):
                state[f"layers.{new_index}." + name[len(f"layers.{source}."):]] = tensor.clone()
        if source in seen:
            _zero_output_projections(state, f"layers.{new_index}.")
        seen.add(source)
    return _new_model_like(model, cfg, state)


def grow(model: GPT, width_factor: int, new_layers: int, where: str = "interleave",
         noise: float = 0.01, seed: int = 0, verbose: bool = True) -> GPT:
    """Bilateral growth: width x ``width_factor`` and ``new_layers`` more blocks at once."""
    insertion_plan(model.cfg.n_layers, new_layers, where)     # check the depth arguments before widening
    return grow_depth(grow_width(model, width_factor, noise, seed, verbose), new_layers, where)


# ----------------------------------------------------------- expert splitting
@torch.no_grad()
def split_experts(model: GPT, factor: int) -> GPT:
    """Cut every expert into ``factor`` finer experts along its hidden dimension.

    Expert e's hidden units are split into ``factor`` slices; slice j becomes
    expert ``e * factor + j``.  Router rows are repeated, so the finer experts
    of e share e's logit and each gets probability p_e / factor; ``top_k``
    becomes ``top_k * factor`` so all slices of the chosen experts are picked;
    the down projections are multiplied by ``factor`` to undo the 1/factor.
    Summing the slices gives back the whole expert: exact.  An expert bias
    (aux-loss-free balancing) is repeated and divided by ``factor`` as well, so
    the slices' scores ``(p_e + b_e) / factor`` rank exactly as before.
    """
    _check_factor("factor", factor)
    if not model.cfg.is_moe:
        raise ValueError("split_experts needs an MoE model; this one is dense (upcycle it first)")
    cfg = model.cfg.split(factor)
    old = _state(model)
    state = {}
    for name, tensor in old.items():
        if ".router." in name:
            state[name] = tensor.repeat_interleave(factor, dim=0)        # (E*factor, d)
        elif name.endswith(".expert_bias"):
            # slice scores are p_e / factor + b: dividing b by factor keeps every choice the same
            state[name] = tensor.repeat_interleave(factor) / factor      # (E*factor,)
        elif ".ffn.experts." in name:
            prefix, rest = name.split(".ffn.experts.")
            expert, weight = rest.split(".", 1)                          # "3", "w1.weight"
            along = 1 if weight.startswith("w2") else 0                  # hidden units: w2's columns
            for part, piece in enumerate(tensor.chunk(factor, dim=along)):
                new_expert = int(expert) * factor + part
                state[f"{prefix}.ffn.experts.{new_expert}.{weight}"] = (
                    piece * factor if along == 1 else piece.clone())
        else:
            state[name] = tensor
    return _new_model_like(model, cfg, state)


# ------------------------------------------------------------- measurement
@dataclass
class PreservationReport:
    """How much a growth step changed the model's function on one batch."""

    max_abs_logit_diff: float
    loss_before: float
    loss_after: float
    routing_unchanged: bool | None   # None when the two models' experts do not correspond

    @property
    def jump(self) -> float:
        """Cross-entropy after minus before (aux losses excluded)."""
        return self.loss_after - self.loss_before

    def __str__(self) -> str:
        routing = {True: "unchanged", False: "CHANGED", None: "not comparable"}[self.routing_unchanged]
        return (f"max |delta logits| = {self.max_abs_logit_diff:.2e}\n"
                f"loss before = {self.loss_before:.6f}, after = {self.loss_after:.6f}, "
                f"jump = {self.jump:+.2e}\n"
                f"top-k routing: {routing}")


def _routing(output) -> list[torch.Tensor]:
    """Each MoE layer's chosen experts per token in a model's output, as sorted sets (N, k)."""
    return [stats.top_k_experts.sort(dim=-1).values for stats in output.routing]


@torch.no_grad()
def preservation_report(before: GPT, after: GPT, idx: torch.Tensor, targets: torch.Tensor) -> PreservationReport:
    """Compare two models on one batch, both in eval mode (restored afterwards).

    Routing is compared layer by layer when both models have the same MoE
    layers and experts (width growth); otherwise it is reported as None."""
    modes = before.training, after.training
    before.eval(), after.eval()
    out_before, out_after = before(idx, targets), after(idx, targets)
    routing_before, routing_after = _routing(out_before), _routing(out_after)
    before.train(modes[0]), after.train(modes[1])
    comparable = (routing_before and len(routing_before) == len(routing_after)
                  and before.cfg.num_experts == after.cfg.num_experts)
    routing_unchanged = (all(torch.equal(a, b) for a, b in zip(routing_before, routing_after))
                         if comparable else None)
    return PreservationReport(
        # in the logits' own precision (float32, or float64 for a float64 model): nothing
        # float64 is made on the model's device, which Apple's MPS could not hold
        max_abs_logit_diff=(upcast(out_after.logits) - upcast(out_before.logits)).abs().max().item(),
        loss_before=out_before.loss.item(),
        loss_after=out_after.loss.item(),
        routing_unchanged=routing_unchanged,
    )
