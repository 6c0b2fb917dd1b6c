"""Reference solutions to the exercises of notebook 03 (parameter accounting).

Try the exercises first: ``check("moe_parameter_counts", moe_parameter_counts)`` in
the notebook tells you whether your version is right and, if not, what to look at.
"""


def moe_parameter_counts(cfg):
    """(total, active) parameters of a model config, by formula.

    Active = everything one token uses: embedding, attention, norms, the LM head, the
    routers, the shared experts and k of the E experts in every MoE block."""
    d, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    embedding = V * d
    lm_head = 0 if cfg.tie_embeddings else V * d
    attention = d * cfg.n_heads * cfg.head_size * 2 + d * cfg.kv_heads * cfg.head_size * 2   # wq, wo; wk, wv
    norms = (2 * L + 1) * d                                     # two per block and the final one
    moe_blocks = cfg.num_moe_layers                             # 0 for a dense model
    dense_blocks = L - moe_blocks
    expert = 3 * d * cfg.d_ff
    per_moe_block = d * cfg.num_experts + cfg.num_experts * expert + cfg.num_shared_experts * 3 * d * cfg.shared_hidden
    total = (embedding + lm_head + L * attention + norms
             + moe_blocks * per_moe_block + dense_blocks * 3 * d * cfg.dense_hidden)
    inactive = moe_blocks * (cfg.num_experts - cfg.top_k) * expert
    return total, total - inactive


def forward_flops_per_token(cfg, seq_len: int) -> float:
    """Forward FLOPs per token (PaLM, appendix B): 2 x active matmul parameters + 4 L T H hd."""
    d, V = cfg.d_model, cfg.vocab_size
    _, active = moe_parameter_counts(cfg)
    norms = (2 * cfg.n_layers + 1) * d
    matmul = active - V * d - norms                             # the embedding is a lookup, gains are elementwise
    if cfg.tie_embeddings:
        matmul += V * d                                         # ... but a tied table still is the LM head
    attention = 4 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_size   # q k^T and weights @ v
    return float(2 * matmul + attention)


def training_memory_bytes(cfg, bytes_per_value: int) -> int:
    """Bytes of weights and gradients (bytes_per_value each) and two float32 AdamW moments,
    for *every* parameter: memory follows the total, not the active count."""
    total, _ = moe_parameter_counts(cfg)
    return total * (bytes_per_value + bytes_per_value + 2 * 4)
