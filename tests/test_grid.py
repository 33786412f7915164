"""The sigma grid against the paper's formulas and the node table in the research notes."""

import math

import pytest
import torch

from lmkan_surgery import GridSizeError
from lmkan_surgery.grid import check_num_grids, grid_node_values, locate, sigma
from oracles import naive_cell, naive_nodes


def test_sigma_is_the_laplace_cdf():
    x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    expected = torch.where(x <= 0, 0.5 * torch.exp(x), 1 - 0.5 * torch.exp(-x))
    assert torch.allclose(sigma(x), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("g", [3, 4, 8, 12, 20, 28, 40, 64, 128, 256])
def test_nodes_match_the_paper(g):
    nodes = grid_node_values(g)
    assert len(nodes) == g + 1
    assert nodes == pytest.approx(naive_nodes(g), abs=1e-14)
    assert all(b > a for a, b in zip(nodes, nodes[1:]))
    if g % 2 == 0:
        assert nodes[g // 2] == 0.0  # 0 is exactly a node for even G (needed by the ReLU fold)


def test_node_values_from_the_notes():
    assert grid_node_values(12)[1:7] == pytest.approx([-1.792, -1.099, -0.693, -0.405, -0.182, 0.0], abs=1e-3)
    assert grid_node_values(8)[0] == pytest.approx(-2.079, abs=1e-3)
    assert grid_node_values(40)[0] == pytest.approx(-3.689, abs=1e-3)


@pytest.mark.parametrize("bad", [2, 0, -5, 257, 8.0, "8", None, True])
def test_bad_grid_sizes_raise(bad):
    with pytest.raises(GridSizeError, match="num_grids"):
        check_num_grids(bad)


@pytest.mark.parametrize("g", [3, 8, 28])
def test_locate_matches_naive_and_extrapolates(g):
    x = torch.cat([torch.randn(500, dtype=torch.float64) * 3, torch.tensor([-1e3, -50.0, 0.0, 50.0, 1e3],
                                                                              dtype=torch.float64)])
    cell, t, slope = locate(x, g)
    nodes = naive_nodes(g)
    for k, value in enumerate(x.tolist()):
        i, tt = naive_cell(value, nodes)
        assert cell[k].item() == i
        assert t[k].item() == pytest.approx(tt, rel=1e-12, abs=1e-12)
        assert slope[k].item() == pytest.approx(1 / (nodes[i + 1] - nodes[i]), rel=1e-12)
    assert cell.min() >= 0 and cell.max() <= g - 1
    assert t.min() < -100 and t.max() > 100  # not clamped: the edge cells extend linearly
    assert math.isclose(float(t[-3]), 0.0, abs_tol=1e-15) or g % 2  # x = 0 sits on a node for even G
