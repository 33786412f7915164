"""Training plumbing: torchrun detection, deterministic sharded batches, atomic checkpoints with RNG states."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, TensorDataset, default_collate

from ..atomic import atomic_write
from ..errors import CheckpointError, ConfigError

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class DistEnv:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and shows progress."""
        return self.rank == 0


def setup_distributed(device_hint: str | None) -> tuple[DistEnv, torch.device]:
    """Join the torchrun process group when RANK/WORLD_SIZE say so (gloo on CPU, nccl on GPU); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device_hint is None else torch.device(device_hint).type == "cuda"
    if world <= 1 or "RANK" not in os.environ:
        return DistEnv(), torch.device(device_hint or ("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistEnv(rank, world, local_rank, owns), device


def teardown_distributed(env: DistEnv) -> None:
    """Leave the process group if this run created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Synchronise ranks (no-op in a single process)."""
    if env.world_size > 1:
        dist.barrier()


def all_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if env.world_size > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= env.world_size
    return values


class ShardedBatches:
    """Deterministic batches: epoch e shuffles with seed (seed, e); global batch k is split by rank (i::world).

    The same (seed, epoch, step) gives the same samples whatever the world size, so a resumed or a distributed run
    sees exactly the data of an uninterrupted single-process one. The incomplete last global batch is dropped.
    """

    def __init__(self, dataset: Dataset, global_batch: int, seed: int, env: DistEnv) -> None:
        if global_batch % env.world_size:
            raise ConfigError(f"batch_size={global_batch} must divide by the world size {env.world_size}")
        self.dataset, self.global_batch, self.seed, self.env = dataset, global_batch, seed, env
        self.steps_per_epoch = len(dataset) // global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training set ({len(dataset)} samples) is smaller than batch_size={global_batch}")

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Any]:
        """Batches of one epoch for this rank, starting at step start_step within it."""
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        for k in range(start_step, self.steps_per_epoch):
            chunk = order[k * self.global_batch:(k + 1) * self.global_batch]
            batch = fetch(self.dataset, chunk[self.env.rank::self.env.world_size])
            yield self.dataset.augment(batch) if isinstance(self.dataset, AugmentedTensors) else batch


class AugmentedTensors(TensorDataset):
    """Equally long tensors plus a batch-level augmentation: training batches pass through augment(batch) (e.g.
    random rotations, flips, permutations), drawn from torch's global RNG, which checkpoints save and resume.

    Evaluation batches are not augmented. augment takes and returns a tuple of tensors with the batch first.
    """

    def __init__(self, *tensors: torch.Tensor, augment: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]
                 ) -> None:
        super().__init__(*tensors)
        self.augment = augment


def fetch(dataset: Dataset, indices: torch.Tensor) -> Any:
    """The batch at `indices`: direct tensor indexing for a TensorDataset, default_collate otherwise."""
    if isinstance(dataset, TensorDataset):
        return tuple(t[indices] for t in dataset.tensors)
    return default_collate([dataset[i] for i in indices.tolist()])


def eval_batches(dataset: Dataset, batch: int, env: DistEnv) -> Iterator[Any]:
    """This rank's contiguous shard of an evaluation set, in batches."""
    indices = torch.arange(len(dataset))[env.rank::env.world_size]
    for start in range(0, len(indices), batch):
        yield fetch(dataset, indices[start:start + batch])


def as_dataset(data: Any, name: str) -> Dataset:
    """Accept a Dataset or a tuple of equally long tensors."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(*data)
    raise ConfigError(f"{name} must be a torch Dataset or a tuple of tensors, got {type(data).__name__}")


def split_batch(batch: Any) -> tuple[Any, Any | None]:
    """(inputs, targets or None) of a batch."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from: python, numpy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str, payload: dict[str, Any]) -> Path:
    """Write the checkpoint atomically (temp file in the same folder, fsync, rename) and return its path."""
    return atomic_write(Path(directory) / CHECKPOINT_NAME, lambda handle: torch.save(payload, handle))


def load_checkpoint(directory: str) -> dict[str, Any] | None:
    """The checkpoint in `directory`, or None when there is none yet."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
