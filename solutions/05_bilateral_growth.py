"""Reference solutions to the exercises of notebook 05 (bilateral growth).

Try the exercises first: ``check("widen_ffn", widen_ffn)`` in the notebook tells you
whether your version is right and, if not, what to look at.
"""

import copy

import torch

from moe_helpers.layers import FeedForward


def widen_ffn(ffn: FeedForward, factor: int) -> FeedForward:
    """A FeedForward ``factor`` times wider (d_model and d_ff) with wide([x, .., x]) = [ffn(x), .., ffn(x)].

    Every matrix: input columns tiled and divided by the factor, output rows tiled."""
    d_ff, d_model = ffn.w1.weight.shape
    wide = FeedForward(d_model * factor, d_ff * factor)
    with torch.no_grad():
        for name in ("w1", "w3", "w2"):
            weight = getattr(ffn, name).weight                  # (out, in)
            getattr(wide, name).weight.copy_(weight.repeat(factor, factor) / factor)   # (out * n, in * n)
    return wide


def identity_copy(block):
    """A copy of ``block`` whose attention output projection and every FFN down projection are zero.

    Both residual additions then add zero: the new block is the identity (LLaMA Pro)."""
    new = copy.deepcopy(block)
    with torch.no_grad():
        for name, param in new.named_parameters():
            if name.endswith(("attention.wo.weight", "w2.weight")):   # wo; w2 of the FFN or of every expert
                param.zero_()
    return new


def split_ffn(ffn: FeedForward, parts: int) -> list:
    """Cut the hidden units of ``ffn`` into ``parts`` equal slices: smaller FFNs whose outputs add up to ffn(x)."""
    d_ff, d_model = ffn.w1.weight.shape
    size = d_ff // parts
    pieces = []
    for part in range(parts):
        units = slice(part * size, (part + 1) * size)
        piece = FeedForward(d_model, size)
        with torch.no_grad():
            piece.w1.weight.copy_(ffn.w1.weight[units])         # (size, d_model): rows are hidden units
            piece.w3.weight.copy_(ffn.w3.weight[units])
            piece.w2.weight.copy_(ffn.w2.weight[:, units])      # (d_model, size): columns are hidden units
        pieces.append(piece)
    return pieces
