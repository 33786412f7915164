"""Data-chosen pairing: which inputs of an lmKAN layer share a 2-D function, folded into the producer for free.

An lmKAN layer pairs adjacent inputs (2p, 2p+1). For a converted layer that order is arbitrary; two point-mass
features (say 80% exact zeros each) in one pair put most samples in one cell of its grid. `spread_pairing`
orders the features so that each pair couples a feature with a large point mass with one with a small one, and
`fold_pairing` applies the order to a producer Linear's outputs and its consumer's inputs (and per-channel modules
between them): the composed function is unchanged and inference costs nothing.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, ShapeError


def point_mass_share(rows: torch.Tensor) -> torch.Tensor:
    """Per feature of rows [n, F]: the share of samples taking its most frequent value."""
    if rows.dim() != 2 or rows.shape[0] < 1:
        raise ShapeError(f"point_mass_share needs samples [n, features], got {tuple(rows.shape)}")
    shares = [torch.unique(col, return_counts=True)[1].max() for col in rows.detach().t()]
    return torch.stack(shares).to(torch.float64) / rows.shape[0]


def spread_pairing(rows: torch.Tensor) -> torch.Tensor:
    """A permutation of the F features (int64) whose consecutive pairs match the k-th largest point-mass share with
    the k-th smallest (an odd F leaves the median feature last)."""
    order = torch.argsort(point_mass_share(rows), descending=True, stable=True)
    heavy, light = order[: len(order) // 2], order[len(order) // 2:].flip(0)
    paired = torch.stack([heavy, light[: len(heavy)]], dim=1).reshape(-1)
    return torch.cat([paired, light[len(heavy):]])


def fold_pairing(producer: nn.Linear, consumer: nn.Linear, order: torch.Tensor,
                 between: Sequence[nn.Module] = ()) -> tuple[nn.Linear, nn.Linear, list[nn.Module]]:
    """Copies of producer (rows), per-channel `between` modules (BatchNorm1d) and consumer (columns) permuted by
    `order`, so consumer(act(producer(x))) is unchanged and the consumer's adjacent inputs are the chosen pairs."""
    if not isinstance(producer, nn.Linear) or not isinstance(consumer, nn.Linear):
        raise ConfigError("fold_pairing permutes an nn.Linear producer and an nn.Linear consumer")
    size = producer.out_features
    if consumer.in_features != size or sorted(order.tolist()) != list(range(size)):
        raise ShapeError(f"order must be a permutation of the producer's {size} outputs, which the consumer "
                         f"({consumer.in_features} inputs) must read")
    new_producer, new_consumer = copy.deepcopy(producer), copy.deepcopy(consumer)
    with torch.no_grad():
        new_producer.weight.copy_(producer.weight[order])
        if producer.bias is not None:
            new_producer.bias.copy_(producer.bias[order])
        new_consumer.weight.copy_(consumer.weight[:, order])
    new_between = []
    for module in between:
        if not isinstance(module, nn.BatchNorm1d) or module.num_features != size:
            raise ConfigError(f"only BatchNorm1d({size}) can sit between the producer and the consumer, got {module}")
        module = copy.deepcopy(module)
        for name in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(module, name)
            if value is not None:
                value.data.copy_(value.data[order])
        new_between.append(module)
    return new_producer, new_consumer, new_between
