"""User data for the command line: `npz:PATH` (arrays x, y), `imagefolder:PATH` (torchvision ImageFolder) and
`module:package.module:factory` (a callable returning (train, val) datasets), as (inputs, targets) tensor pairs."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import ConfigError

BUILT_IN = ("synthetic", "fashion-mnist")
KINDS = ("npz", "imagefolder", "module")
VAL_SHARE = 0.2  # npz and imagefolder data are split train/validation 80/20 after a seeded shuffle
Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DataSpec:
    """A --data value: a built-in source name, or a kind (npz, imagefolder, module) and its target."""

    kind: str
    target: str = ""

    @property
    def user(self) -> bool:
        """Whether the data comes from the user (npz, imagefolder, module)."""
        return self.kind in KINDS

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


def parse_data(text: str) -> DataSpec:
    """'synthetic', 'fashion-mnist', 'npz:PATH', 'imagefolder:PATH' or 'module:package.module:factory'; ConfigError
    naming the accepted forms otherwise (paths must exist)."""
    if text in BUILT_IN:
        return DataSpec(text)
    kind, sep, target = text.partition(":")
    forms = "synthetic, fashion-mnist, npz:PATH, imagefolder:PATH or module:package.module:factory"
    if not sep or kind not in KINDS or not target:
        raise ConfigError(f"{text!r} is not a data source; use {forms}")
    if kind == "npz" and not Path(target).is_file():
        raise ConfigError(f"npz:{target}: no such file (an .npz with arrays x and y)")
    if kind == "imagefolder" and not Path(target).is_dir():
        raise ConfigError(f"imagefolder:{target}: no such folder (one sub-folder of images per class)")
    if kind == "module" and (target.count(":") != 1 or not all(target.split(":"))):
        raise ConfigError(f"module:{target}: expected module:package.module:factory")
    return DataSpec(kind, target)


def _split(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[Pair, Pair]:
    """A seeded shuffle, then 80/20 train/validation (at least one validation sample)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(x) * VAL_SHARE))
    if len(x) < 2:
        raise ConfigError(f"the data holds {len(x)} sample(s); at least 2 are needed (train and validation)")
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def _targets(y: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Integer labels as int64 (classification), anything else as float32 (regression)."""
    y = torch.as_tensor(np.asarray(y))
    return y.long() if not torch.is_floating_point(y) else y.float()


def load_npz(path: str | os.PathLike, seed: int = 0) -> tuple[Pair, Pair]:
    """(train, val) from an .npz holding arrays x [N, ...] and y [N] or [N, k]; ConfigError if they are missing."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise ConfigError(f"npz:{path} must hold arrays named x and y, found {sorted(data.files)}")
            x, y = torch.from_numpy(np.asarray(data["x"], dtype=np.float32)), _targets(data["y"])
    except (OSError, ValueError) as err:
        raise ConfigError(f"npz:{path} is not a readable .npz file ({err})") from None
    if len(x) != len(y):
        raise ConfigError(f"npz:{path}: x holds {len(x)} samples but y holds {len(y)}")
    return _split(x, y, seed)


def load_imagefolder(path: str | os.PathLike, shape: tuple[int, ...], limit: int, seed: int = 0) -> tuple[Pair, Pair]:
    """(train, val) from a torchvision ImageFolder, images resized to shape[2:] with shape[1] channels (1 or 3), at
    most `limit` images drawn at random."""
    from torchvision import datasets, transforms

    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ConfigError(f"imagefolder data needs an (N, 1 or 3, H, W) input shape, got {shape}")
    steps = [transforms.Resize(tuple(shape[2:])), transforms.ToTensor()]
    if shape[1] == 1:
        steps.insert(0, transforms.Grayscale())
    try:
        folder = datasets.ImageFolder(str(path), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as err:
        raise ConfigError(f"imagefolder:{path}: {err}") from None
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(seed))[:limit]
    items = [folder[int(i)] for i in order]
    x = torch.stack([image for image, _ in items])
    return _split(x, torch.tensor([label for _, label in items]), seed)


def _stack(dataset, limit: int) -> Pair:
    """The first `limit` (input, target) items of a dataset as two tensors."""
    items = [dataset[i] for i in range(min(limit, len(dataset)))]
    if not items:
        raise ConfigError("the factory returned an empty dataset")
    return torch.stack([torch.as_tensor(x) for x, _ in items]).float(), _targets(np.array([y for _, y in items]))


def import_factory(target: str) -> Callable[..., Any]:
    """The callable named by `package.module:name`, resolved from the working directory like `python -m`;
    ConfigError (the import error's text) when it cannot be imported. The working directory is on sys.path only
    during the import: left there, a checkout's folders would shadow installed packages of the same name for the
    rest of the process (its kernels/ shadowed Hugging Face's `kernels`, which transformers >= 5.25 imports)."""
    module_name, _, name = target.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(str(err)) from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def load_factory(target: str, limit: int) -> tuple[Pair, Pair]:
    """(train, val) from `package.module:factory`, a callable returning (train, val) datasets of (x, y) items."""
    try:
        factory = import_factory(target)
    except ConfigError as err:
        raise ConfigError(f"module:{target}: cannot import the data factory ({err})") from None
    result = factory()
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ConfigError(f"module:{target}: the factory must return (train, val) datasets, got "
                          f"{type(result).__name__}")
    return _stack(result[0], limit), _stack(result[1], limit)


def load_source(spec: DataSpec, shape: tuple[int, ...], limit: int, seed: int = 0) -> tuple[Pair, Pair] | None:
    """(train, val) of a user source (at most `limit` samples in all where the source is large), None for the
    built-in ones (the command line makes those itself)."""
    if spec.kind == "npz":
        return load_npz(spec.target, seed)
    if spec.kind == "imagefolder":
        return load_imagefolder(spec.target, shape, limit, seed)
    if spec.kind == "module":
        return load_factory(spec.target, limit)
    return None
