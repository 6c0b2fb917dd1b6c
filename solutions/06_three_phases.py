"""Reference solutions to the exercises of notebook 06 (three phases).

Try the exercises first: ``check("transition_jump", transition_jump)`` in the notebook
tells you whether your version is right and, if not, what to look at.
"""

import torch


def transition_jump(before, after, idx, targets, tolerance: float = 1e-3):
    """(jump, ok): the cross-entropy of ``after`` minus that of ``before`` on the same batch,
    both in eval mode, and whether |jump| < tolerance.  The models' modes are restored."""
    modes = before.training, after.training
    before.eval()
    after.eval()
    with torch.no_grad():
        loss_before = before(idx, targets).loss.item()         # cross-entropy only, aux losses left out
        loss_after = after(idx, targets).loss.item()
    before.train(modes[0])
    after.train(modes[1])
    jump = loss_after - loss_before
    return jump, abs(jump) < tolerance


def expert_load_share(top_k_experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Share of the N*k token slots that each expert received: (N, k) -> (E,), sums to 1."""
    counts = torch.bincount(top_k_experts.flatten(), minlength=num_experts)   # (E,)
    return counts.float() / top_k_experts.numel()
