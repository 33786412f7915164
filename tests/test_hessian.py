"""The Hessian regularizer against analytic second derivatives on the non-uniform grid."""

import pytest
import torch

from lmkan_surgery import LMKANLinear, hessian_penalty, model_hessian_penalty
from lmkan_surgery.grid import grid_nodes


def sampled(fn, g, pairs=2, outputs=3):
    nodes = grid_nodes(g)
    a, b = torch.meshgrid(nodes, nodes, indexing="ij")
    return fn(a, b).view(1, g + 1, g + 1, 1).expand(pairs, g + 1, g + 1, outputs).contiguous()


@pytest.mark.parametrize("g", [3, 8, 20])
def test_analytic_cases(g):
    functions = 2 * 3  # pairs x outputs
    # x1^2 + x2^2: D11 = D22 = 2, D12 = 0 -> H = 8 (second differences of a quadratic are exact)
    assert hessian_penalty(sampled(lambda a, b: a**2 + b**2, g)).item() == pytest.approx(8 * functions, rel=1e-10)
    # x1 * x2: D12 = 1 -> H = 2
    assert hessian_penalty(sampled(lambda a, b: a * b, g)).item() == pytest.approx(2 * functions, rel=1e-10)
    # affine: no curvature at all
    assert hessian_penalty(sampled(lambda a, b: 3 * a - 2 * b + 1, g)).item() == pytest.approx(0, abs=1e-10)


def test_model_penalty_sums_layers_and_is_differentiable():
    model = torch.nn.Sequential(LMKANLinear(4, 3), torch.nn.ReLU(), LMKANLinear(3, 2))
    total = model_hessian_penalty(model)
    assert total.item() == pytest.approx((model[0].hessian_penalty() + model[2].hessian_penalty()).item())
    total.backward()
    assert model[0].table.grad is not None and model[0].table.grad.abs().sum() > 0
    assert model_hessian_penalty(torch.nn.Linear(2, 2)).item() == 0
