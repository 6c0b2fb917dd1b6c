"""Run by ``torchrun`` from ``tests/test_parallel.py``: auxiliary-loss-free balancing under data parallelism.

Every rank trains the same tiny MoE, whose layers keep an expert bias, with ``train_phase`` on its
slice of the same batches (FSDP2, with and without expert parallelism), and a plain copy on the
whole batches as one process would. Each bias moves by the load of the whole step, summed over the
ranks, so after training it is the same on every rank and the same as the single process's (float64,
so that no routing choice differs by rounding).
"""

import copy

import numpy as np
import torch
import torch.distributed as dist

from moe_helpers.config import preset
from moe_helpers.data import TokenData
from moe_helpers.distributed import DataParallel
from moe_helpers.model import GPT
from moe_helpers.train import train_phase

from common import check, with_and_without_expert_parallelism


def compare(parallel: DataParallel) -> None:
    tiny = preset("tiny")
    # aux losses off: under data parallelism each rank would balance its own slice (see fsdp_check.py)
    cfg = tiny.model.replace(num_experts=4, top_k=2, bias_update_rate=0.01, aux_loss_coef=0.0, z_loss_coef=0.0)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 30_000).astype(np.uint16)
    data = TokenData(train=tokens[:25_000], val=tokens[25_000:], tokenizer=None, source="random tokens")
    config = tiny.train.replace(steps_phase1=8, log_every=4, eval_every=8, device="cpu")
    torch.manual_seed(0)
    reference = GPT(cfg).double()
    sharded = parallel.shard(copy.deepcopy(reference))
    train_phase(reference, data, config, progress=False, verbose=False)
    train_phase(sharded, data, config, progress=False, verbose=False, parallel=parallel)

    mine = torch.stack([layer.expert_bias for layer in sharded.moe_layers])       # (layers, E)
    expected = torch.stack([layer.expert_bias for layer in reference.moe_layers])
    check(expected.abs().max() > 0, "the single process's bias never moved")
    everyone = [torch.empty_like(mine) for _ in range(parallel.world)]
    dist.all_gather(everyone, mine)
    check(all(torch.equal(other, mine) for other in everyone), "the ranks' expert biases differ")
    check(torch.equal(mine, expected), f"the biases differ from one process's by {(mine - expected).abs().max():.3g}")
    if parallel.is_main:
        kind = "expert parallel + FSDP2" if parallel.expert_parallel else "FSDP2"
        print(f"{kind}: expert bias OK on {parallel.world} ranks", flush=True)


if __name__ == "__main__":
    with_and_without_expert_parallelism(compare)
