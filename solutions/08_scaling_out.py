"""Reference solutions to the exercises of notebook 08 (scaling out).

Try the exercises first: ``check("bytes_sent", bytes_sent)`` in the notebook tells you
whether your version is right and, if not, what to look at.
"""


def bytes_sent(send_matrix, d_model, bytes_per_value):
    """Bytes that crossed between ranks in one expert-parallel forward pass, all ranks together:
    the off-diagonal token slots (the diagonal stays on its rank), each a d_model-vector,
    sent once to be dispatched and once more to come back (combine)."""
    off_rank = int(send_matrix.sum() - send_matrix.diagonal().sum())
    return 2 * off_rank * d_model * bytes_per_value


def rank_of_expert(expert, num_experts, ranks):
    """Rank r holds the contiguous block of experts r * E/W ... (r + 1) * E/W - 1."""
    return expert // (num_experts // ranks)


def all_to_all_limit_mb(tokens, top_k, d_model, bytes_per_value):
    """MB one MoE layer's forward pass sends, all ranks together, as ranks -> infinity:
    1 - 1/ranks -> 1, so every token slot leaves its rank, and comes back.  For Mixtral-8x7B
    and section 4's batch: 2 x 32 768 x 2 x 4 096 x 2 bytes, about 1 074 MB."""
    return 2 * tokens * top_k * d_model * bytes_per_value / 1e6
