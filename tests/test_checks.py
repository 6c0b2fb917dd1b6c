import pytest
import torch

from moe_helpers.checks import show_match


def test_a_match_prints_one_tick_with_the_largest_difference(capsys):
    show_match(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0 + 1.2e-7], dtype=torch.float64),
               "two vectors")
    assert capsys.readouterr().out == "✓ two vectors  (largest difference 1.2e-07)\n"


def test_nested_values_and_tolerances(capsys):
    show_match((torch.ones(2), [torch.zeros(3)]), (torch.ones(2) + 0.01, [torch.zeros(3)]), "pairs", rtol=0, atol=0.02)
    assert capsys.readouterr().out.startswith("✓ pairs  (largest difference 1.0e-02)")


def test_a_mismatch_raises_and_prints_no_tick(capsys):
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        show_match(torch.tensor([1.0]), torch.tensor([1.5]), "off by a half")
    assert capsys.readouterr().out == ""
