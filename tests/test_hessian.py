"""The Hessian regularizer against analytic second derivatives on the non-uniform grid."""

import copy

import pytest
import torch

from lmkan_surgery import LMKANLinear, hessian_penalty, model_hessian_penalty
from lmkan_surgery.distill import TrainConfig, train_lmkan
from lmkan_surgery.nn.hessian import hessian_term, stencil_penalty
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


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (5, 9, 9, 7), (3, 9, 9, 1), (2, 3, 5, 5, 1), (2, 3, 11, 11, 1),
                                   (1, 41, 41, 2)])
def test_closed_form_gradient_equals_autograd(shape):
    """hessian_term of one table (2Q up to G 8, one output as one mm; per-axis operators beyond; no graph) against
    autograd through the stencil definition, float64."""
    table = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape)))
    table.requires_grad_(True)
    reference = stencil_penalty(table)
    (expected,) = torch.autograd.grad(reference, table)
    value, (grad,), _ = hessian_term([table], False)
    assert grad.shape == table.shape and grad.dtype == torch.float64
    assert value.item() == pytest.approx(reference.item(), rel=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("relative", [False, True])
def test_training_step_adds_the_autograd_hessian_gradient(relative):
    """The engine adds the Hessian gradient to the tables after backward: the gradients of its first step equal
    autograd's of mse + lambda * penalty (relative: L0 * mean over layers of penalty / (F var(T)), var held)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(LMKANLinear(4, 6, 4), LMKANLinear(6, 2, 4)).double()
    with torch.no_grad():
        for layer in model:
            layer.table.normal_()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(-4, 5, (32, 2)).double()  # integer targets: L0 (a float32 mean) is exact in any row order
    lam = 0.3
    reference = copy.deepcopy(model)
    loss = torch.nn.functional.mse_loss(reference(x).float(), y.float())  # the engine's data loss is float32,
    if relative:  # and so is its L0; the table variances are in the tables' dtype
        terms = [m.hessian_penalty() / (m.table.numel() / 25 * m.table.detach().var())
                 for m in reference]
        loss = loss + lam * float(((y.float() - y.float().mean(0)) ** 2).mean()) * torch.stack(terms).mean()
    else:
        loss = loss + lam * model_hessian_penalty(reference)
    loss.backward()
    grads = {}
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, task="regression", hessian_start=lam, gamma_target=None,
                      grad_clip=None, hessian_relative=relative, progress=False)
    train_lmkan(model, (x, y), None, cfg,
                on_step_end=lambda step: grads.update({n: p.grad.clone() for n, p in model.named_parameters()}))
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12)


def test_hessian_every_reuses_the_gradient_of_the_last_evaluation():
    """hessian_every=3: steps 1 and 2 add the Hessian gradient of the tables at step 0, step 3 a fresh one (checked
    against autograd on snapshots of the tables before each step)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(LMKANLinear(4, 6, 4), LMKANLinear(6, 2, 4)).double()
    with torch.no_grad():
        for layer in model:
            layer.table.normal_()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, task="regression", hessian_start=0.3, gamma_target=None,
                      grad_clip=None, hessian_every=3, progress=False)
    before, grads = [copy.deepcopy(model)], []

    def record(step):
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        before.append(copy.deepcopy(model))

    train_lmkan(model, (x, y), None, cfg, on_step_end=record)

    def expected(step, tables_from):
        data = copy.deepcopy(before[step])
        torch.nn.functional.mse_loss(data(x).float(), y.float()).backward()
        hessian = copy.deepcopy(before[tables_from])
        (cfg.hessian_lambda(step) * model_hessian_penalty(hessian)).backward()
        extra = {n: p.grad for n, p in hessian.named_parameters() if p.grad is not None}
        return {n: p.grad + extra.get(n, 0.0) for n, p in data.named_parameters()}

    for step, source in [(0, 0), (1, 0), (2, 0), (3, 3)]:
        for name, grad in expected(step, source).items():
            torch.testing.assert_close(grads[step][name], grad, rtol=1e-9, atol=1e-12)
    stale, fresh = grads[1]["0.table"], expected(1, 1)["0.table"]
    assert (stale - fresh).abs().max() > 1e-6  # the reuse is visible: a fresh evaluation would differ
