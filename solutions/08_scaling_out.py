"""Reference solutions to the exercises of notebook 08 (scaling out).

Try the exercises first: the check cell below each stub in the notebook tells you whether
your version is right and, if not, what to look at.
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


# Exercise 3: as ranks -> infinity, 1 - 1/ranks -> 1, so every token slot leaves its rank twice:
# 2 x tokens x top_k x d_model x bytes = 2 x 32 768 x 2 x 4 096 x 2 bytes for Mixtral-8x7B.
answer = 2 * 32_768 * 2 * 4096 * 2 / 1e6     # MB: 1 073.7
