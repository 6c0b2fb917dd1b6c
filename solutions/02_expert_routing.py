"""Reference solutions to the exercises of notebook 02 (expert routing).

Try the exercises first: ``check("route_top_k", route_top_k)`` in the notebook tells
you whether your version is right and, if not, what to look at.
"""

import torch


def route_top_k(router_logits: torch.Tensor, k: int):
    """Softmax over the experts, keep the k largest, renormalise them to sum to 1.

    router_logits: (N, E) -> (weights (N, k), experts (N, k)), best expert first."""
    probs = router_logits.softmax(dim=-1)                       # (N, E)
    top_probs, experts = probs.topk(k, dim=-1)                  # (N, k) each, sorted, largest first
    weights = top_probs / top_probs.sum(dim=-1, keepdim=True)   # (N, k), rows sum to 1
    return weights, experts


def moe_forward(x: torch.Tensor, top_k_weights: torch.Tensor, top_k_experts: torch.Tensor, experts) -> torch.Tensor:
    """y_t = sum over the chosen experts i of g_ti * Expert_i(x_t), each expert run once on its tokens.

    x: (N, d); top_k_weights, top_k_experts: (N, k); experts: a list of E modules."""
    output = torch.zeros_like(x)                                # (N, d)
    for e, expert in enumerate(experts):
        token, rank = torch.where(top_k_experts == e)           # (S_e,) the slots routed to expert e
        if token.numel() == 0:
            continue                                            # an expert nobody chose computes nothing
        weight = top_k_weights[token, rank].unsqueeze(-1)       # (S_e, 1)
        output.index_add_(0, token, weight * expert(x[token]))  # add each slot's output to its token
    return output


def balance_loss(router_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Switch load-balancing loss, top-k form: E * sum_i f_i * P_i.

    f_i: fraction of the N*k slots routed to expert i (a count, no gradient);
    P_i: mean router probability of expert i (the gradient flows through it)."""
    num_tokens, num_experts = router_logits.shape
    probs = router_logits.softmax(dim=-1)                       # (N, E)
    chosen = probs.topk(k, dim=-1).indices                      # (N, k)
    slots = torch.bincount(chosen.flatten(), minlength=num_experts)   # (E,)
    f = slots.float() / (num_tokens * k)                        # (E,)
    P = probs.mean(dim=0)                                       # (E,)
    return num_experts * (f * P).sum()
