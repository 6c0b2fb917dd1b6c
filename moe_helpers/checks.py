"""One printed ✓ where a piece built in a notebook equals the library's (or a known value).

A lesson builds something by hand, then shows that it computes what ``moe_helpers`` computes:

    >>> show_match(my_rms_norm(x), RMSNorm(8)(x), "MyRMSNorm == moe_helpers.layers.RMSNorm")
    ✓ MyRMSNorm == moe_helpers.layers.RMSNorm  (largest difference 0.0e+00)

The comparison is ``torch.testing.assert_close`` (its default tolerances for the dtype, or the
ones given), so a mismatch stops the notebook with the place and size of the difference.
"""

from __future__ import annotations

import torch


def show_match(actual, expected, what: str, **tolerances) -> None:
    """Assert that ``actual`` equals ``expected`` (tensors, numbers or nested tuples / lists of
    them) within ``torch.testing.assert_close``'s tolerances; then print one ✓ line naming
    ``what`` and the largest absolute difference."""
    torch.testing.assert_close(actual, expected, **tolerances)
    print(f"✓ {what}  (largest difference {_largest_difference(actual, expected):.1e})")


def _largest_difference(actual, expected) -> float:
    if isinstance(actual, (tuple, list)):
        return max((_largest_difference(a, e) for a, e in zip(actual, expected)), default=0.0)
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().cpu().double() - expected.detach().cpu().double()).abs().max().item()
