"""The CPU output pool under DistributedDataParallel (gloo, 2 CPU processes: distill's DDP): table gradients written
into pool blocks go through DDP's gradient buckets (copied in, or .grad a view of the bucket) with the same bits as
on fresh pages (LMKAN_CPU_OUTPUT_POOL_MB=0), and steps reuse one block instead of keeping more (no leak)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; gloo over lo")

WORKER = Path(__file__).with_name("ddp_pool_worker.py")
TABLE_BYTES = 128 * 81 * 256 * 4  # LMKANLinear(256, 256, 8)'s table and its gradient: 10.1 MiB, a pool block


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    """(pooled, fresh): bucket-view setting -> what rank 0 saved (ddp_pool_worker.py, one launch, 4 processes)."""
    out = tmp_path_factory.mktemp("ddp_pool")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", LMKAN_BACKEND="cpu", GLOO_SOCKET_IFNAME="lo")  # lo: no name lookup
    env.pop("LMKAN_CPU_OUTPUT_POOL_MB", None)
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(torch.load(out / f"{run}.pt", weights_only=True) for run in ("pooled", "fresh"))


@pytest.mark.parametrize("bucket_view", [False, True])
def test_ddp_gradients_on_pool_blocks_match_fresh_pages_and_do_not_leak(native, runs, bucket_view):
    pooled, fresh = (run[bucket_view] for run in runs)
    assert torch.equal(pooled["table"], fresh["table"]) and torch.equal(pooled["grad"], fresh["grad"])
    assert torch.isfinite(pooled["grad"]).all() and pooled["grad"].abs().sum() > 0
    assert fresh["pool_bytes"] == [0] * len(fresh["pool_bytes"])
    # Without bucket views .grad is the pooled block itself (DDP copies the bucket back into it); with them .grad
    # is the bucket and the block went back at once.
    assert pooled["grad_on_block"] == [not bucket_view] * len(kept := pooled["pool_bytes"])
    # Each step's gradient block goes back to the pool (at once under bucket views, once zero_grad drops .grad
    # otherwise) and the next step takes it: at most one block kept, the same from the second step on.
    assert max(kept) <= TABLE_BYTES + (2 << 20) and kept[1:] == [kept[1]] * (len(kept) - 1)
    resident = pooled["resident"]
    assert resident[-1] - resident[1] < 4 * TABLE_BYTES
