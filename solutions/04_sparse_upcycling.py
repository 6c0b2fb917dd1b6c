"""Reference solutions to the exercises of notebook 04 (sparse upcycling).

Try the exercises first: ``check("upcycle_state_dict", upcycle_state_dict)`` in the
notebook tells you whether your version is right and, if not, what to look at.
"""

import torch


def upcycle_state_dict(dense_state: dict, num_experts: int, router_std: float = 0.02, generator=None) -> dict:
    """A dense model's weights as an MoE's: every FFN copied into each expert, a new random router per block."""
    state = {}
    d_model = {}                                                # block prefix -> d_model
    for name, tensor in dense_state.items():
        if ".ffn." not in name:
            state[name] = tensor.clone()                        # embedding, attention, norms, LM head
            continue
        prefix, weight = name.split(".ffn.")                    # "layers.3", "w1.weight"
        for e in range(num_experts):
            state[f"{prefix}.ffn.experts.{e}.{weight}"] = tensor.clone()
        if weight == "w1.weight":
            d_model[prefix] = tensor.shape[1]                   # w1: (d_ff, d_model)
    for prefix, width in d_model.items():
        router = torch.randn(num_experts, width, generator=generator) * router_std
        state[f"{prefix}.ffn.router.weight"] = router
    return state


def chosen_mass(router_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of each token's k largest router probabilities: (N, E) -> (N,).

    Without renormalisation an upcycled layer computes FFN(x) times this factor."""
    probs = router_logits.softmax(dim=-1)                       # (N, E)
    return probs.topk(k, dim=-1).values.sum(dim=-1)             # (N,)
