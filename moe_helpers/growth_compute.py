"""Does growing save compute?  Validation curves against training FLOPs.

A run's ``History`` records the tokens seen at every evaluation; times the
training FLOPs per token (``accounting.flops_per_token(cfg, seq_len).training``)
that is a curve of validation loss against cumulative training compute.  A
grown model's curve starts at the FLOPs its small model already used.

The compute saved by growing is measured as in bert2BERT (Chen et al. 2022)
and LiGO (Wang et al. 2023): train the large model from scratch, take its
final validation loss as the target, and find the FLOPs at which the grown
model's curve (small model included) first reaches that loss::

    saved = 1 - FLOPs(grown reaches target) / FLOPs(scratch run)
"""

from __future__ import annotations

from .train import History


def flops_curve(history: History, flops_per_training_token: float,
                already_spent: float = 0.0) -> tuple[list[float], list[float]]:
    """(cumulative training FLOPs, validation loss) at each evaluation of ``history``,
    starting from ``already_spent`` FLOPs."""
    evaluated = history.evaluated()
    return ([already_spent + r["tokens"] * flops_per_training_token for r in evaluated],
            [r["val_loss"] for r in evaluated])


def flops_to_reach(flops: list, losses: list, target: float) -> float | None:
    """FLOPs at which a validation curve first reaches ``target`` (linear interpolation between
    evaluations), or None if it never does."""
    if len(flops) != len(losses):
        raise ValueError(f"flops and losses must have the same length, got {len(flops)} and {len(losses)}")
    if not losses:
        return None
    if losses[0] <= target:
        return flops[0]
    for (f0, l0), (f1, l1) in zip(zip(flops, losses), zip(flops[1:], losses[1:])):
        if l1 <= target:
            return f0 + (f1 - f0) * (l0 - target) / (l0 - l1)
    return None


def compute_saved(grown: tuple[list, list], scratch: tuple[list, list]) -> float | None:
    """The share of the from-scratch run's training FLOPs that growing saved: ``1 - F_grown / F_scratch``,
    where ``F_scratch`` is the scratch curve's last point and ``F_grown`` the FLOPs at which the grown curve
    first reaches the scratch curve's final loss.  Negative when growing cost more; None when the grown
    curve never reaches that loss."""
    scratch_flops, scratch_losses = scratch
    reached = flops_to_reach(*grown, scratch_losses[-1])
    return None if reached is None else 1.0 - reached / scratch_flops[-1]
