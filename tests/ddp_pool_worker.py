"""Two runs of 2 gloo ranks each, side by side: a float32 LMKANLinear under DistributedDataParallel (as distill's
engine wraps it) whose 10.1 MiB table gradient comes from the CPU binding's output pool
(kernels/cpu/torch_output_pool.h), the "pooled" run with the default cap and the "fresh" one with
LMKAN_CPU_OUTPUT_POOL_MB=0; each trains with gradient_as_bucket_view off, then on. Rank 0 of each run saves, per
setting, the final table, its last gradient, and after every step the pool's kept bytes, the process's resident
memory and whether .grad is the binding's 2 MB-aligned output block itself.

Usage: python ddp_pool_worker.py OUT_DIR (writes OUT_DIR/pooled.pt and OUT_DIR/fresh.pt)."""

from __future__ import annotations

import os
import sys

import torch
import torch._dynamo  # noqa: F401  (DDP's constructor imports it: 4-7 s a process, paid once before the fork)
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lmkan_surgery.kernels import build
from lmkan_surgery.nn import LMKANLinear

STEPS = 6


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _train(bucket_view: bool, rank: int, native) -> dict:
    torch.manual_seed(0)
    layer = LMKANLinear(256, 256, 8)  # the same table on both ranks (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(layer, gradient_as_bucket_view=bucket_view)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    inputs = torch.Generator().manual_seed(100 + rank)
    pool_bytes, resident, grad_on_block = [], [], []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        model(torch.randn(64, 256, generator=inputs)).square().mean().backward()
        optimizer.step()
        pool_bytes.append(native.output_pool_bytes())
        resident.append(_resident_bytes())
        grad_on_block.append(layer.table.grad.data_ptr() % (2 << 20) == 0)  # the binding's output, not a copy
    return {"table": layer.table.detach(), "grad": layer.table.grad, "pool_bytes": pool_bytes,
            "resident": resident, "grad_on_block": grad_on_block}


def _process(index: int, out_dir: str) -> None:
    """Processes 0-1: the pooled run's ranks, 2-3: the fresh run's (its own rendezvous file)."""
    run, rank = ("pooled", "fresh")[index // 2], index % 2
    if run == "fresh":
        os.environ["LMKAN_CPU_OUTPUT_POOL_MB"] = "0"  # read at the process's first pooled output
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, run + '.rendezvous')}", rank=rank,
                            world_size=2)
    native = build.load_native("cpu")
    results = {view: _train(view, rank, native) for view in (False, True)}
    if rank == 0:
        torch.save(results, os.path.join(out_dir, run + ".pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    # Forked, not spawned: the ranks inherit the imports above (seconds per process on the shared box)
    mp.start_processes(_process, args=(sys.argv[1],), nprocs=4, start_method="fork")
