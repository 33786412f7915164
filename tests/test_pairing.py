"""Data-chosen pairing: point masses spread across pairs, the permutation folded into the producer exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmkan_surgery import ConfigError, LMKANLinear, ShapeError
from lmkan_surgery.nn.pairing import fold_pairing, point_mass_share, spread_pairing
from oracles import rel_err


def _rows() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 7, generator=gen)
    for f, share in ((0, 0.9), (1, 0.8), (3, 0.7)):
        x[: int(share * 1000), f] = 0.0
    return x


def test_point_masses_land_in_different_pairs():
    x = _rows()
    shares = point_mass_share(x)
    assert shares[[0, 1, 3]].tolist() == pytest.approx([0.9, 0.8, 0.7])
    order = spread_pairing(x)
    assert sorted(order.tolist()) == list(range(7))
    pairs = order[:6].view(3, 2)
    heavy = shares[pairs] > 0.5
    assert (heavy.sum(1) == 1).all()  # every pair: one point-mass feature, one continuous


def test_fold_pairing_keeps_the_function_and_converts_to_the_chosen_pairs():
    torch.manual_seed(1)
    producer, bn, consumer = nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
    bn.eval()
    x = torch.randn(64, 5)
    order = spread_pairing(torch.relu(bn(producer(x))).detach())
    new_producer, new_consumer, (new_bn,) = fold_pairing(producer, consumer, order, [bn])
    with torch.no_grad():
        before = consumer(torch.relu(bn(producer(x))))
        after = new_consumer(torch.relu(new_bn(new_producer(x))))
        assert rel_err(after, before) < 1e-6
        lmkan = LMKANLinear.from_linear(new_consumer, 6)
        assert rel_err(lmkan(torch.relu(new_bn(new_producer(x)))), before) < 1e-5
    assert torch.equal(new_consumer.weight[:, 0], consumer.weight[:, order[0]])
    with pytest.raises(ShapeError):
        fold_pairing(producer, consumer, order[:-1])
    with pytest.raises(ConfigError):
        fold_pairing(producer, consumer, order, [nn.ReLU()])
