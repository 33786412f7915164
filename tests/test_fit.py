"""Closed-form table fitting: equals gradient descent on the same objective, CG equals the normal equations, and
it beats a Linear refit on a nonlinear target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmkan_surgery import ConfigError, LMKANLinear, ShapeError
from lmkan_surgery.passes.fit import fit_tables, fit_tables_each
from lmkan_surgery.nn.hessian import hessian_form, hessian_penalty, stencil_penalty
from oracles import naive_lookup, rel_err


def _data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64) * 1.5
    y = torch.stack([torch.sin(x[:, 0]) * x[:, 1], x[:, 2] ** 2 - x[:, 3] + 0.3 * x[:, 4]], dim=1)
    return x, y


def _objective(layer: LMKANLinear, start: torch.Tensor, x, y, hessian: float, ridge: float,
               naive: bool = False) -> torch.Tensor:
    """J through the module's forward (or the independent naive per-sample lookup), its Hessian penalty and the
    ridge term."""
    out = naive_lookup(torch.nn.functional.pad(x, (0, 1)), layer.table) + layer.bias if naive else layer(x)
    return ((out - y) ** 2).sum(1).mean() + hessian * hessian_penalty(layer.table) \
        + ridge * ((layer.table - start) ** 2).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quadratic_form_penalty_equals_the_stencils(dtype):
    table = torch.randn(2, 3, 6, 6, 4, dtype=dtype, requires_grad=True)
    fast, slow = hessian_penalty(table), stencil_penalty(table)
    assert rel_err(fast, slow) < (1e-12 if dtype == torch.float64 else 1e-5)
    (g_fast,), (g_slow,) = torch.autograd.grad(fast, table), torch.autograd.grad(slow, table)
    assert rel_err(g_fast, g_slow) < (1e-12 if dtype == torch.float64 else 1e-5)
    form = hessian_form(5)
    flat = table.detach().double().reshape(6, 36, 4)
    assert rel_err(torch.einsum("pao,ab,pbo->", flat, form, flat), slow.double()) < 1e-5


def test_closed_form_fit_equals_gradient_descent_on_the_same_objective():
    torch.manual_seed(0)
    x, y = _data(120)
    hessian, ridge = 1e-2, 1e-3
    fitted = LMKANLinear(5, 2, 4, dtype=torch.float64, init_scale=1.0)
    start = fitted.table.detach().clone()
    descended = LMKANLinear(5, 2, 4, dtype=torch.float64)
    descended.load_state_dict(fitted.state_dict())
    result = fit_tables(fitted, x, y, hessian=hessian, ridge=ridge)
    assert result.solver == "normal"
    opt = torch.optim.LBFGS(descended.parameters(), lr=1, max_iter=2000, tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(descended, start, x, y, hessian, ridge)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    assert rel_err(fitted.table, descended.table) < 1e-5
    assert rel_err(fitted.bias, descended.bias) < 1e-5
    with torch.no_grad():
        j_fit = _objective(fitted, start, x, y, hessian, ridge, naive=True)
        j_gd = _objective(descended, start, x, y, hessian, ridge, naive=True)
    assert float(j_fit) <= float(j_gd) * (1 + 1e-9)


def test_conjugate_gradient_matches_normal_equations_and_chunking_is_transparent():
    torch.manual_seed(1)
    x, y = _data(400, 1)
    dense = LMKANLinear(5, 2, 6, dtype=torch.float64, input_norm="quantile")
    dense.calibrate_placement(x)
    cg = LMKANLinear(5, 2, 6, dtype=torch.float64, input_norm="quantile")
    cg.load_state_dict(dense.state_dict())
    fit_tables(dense, x, y, hessian=1e-3, ridge=1e-4)
    result = fit_tables(cg, list(x.split(70)), list(y.split(70)), hessian=1e-3, ridge=1e-4, max_dense=0,
                        chunk_rows=50, cg_tol=1e-13, cg_iters=3000)
    assert result.solver == "cg"
    assert rel_err(cg.table, dense.table) < 1e-6 and rel_err(cg.bias, dense.bias) < 1e-6


def test_one_normal_matrix_serves_every_hessian_weight_as_separate_fits_would():
    x, y = _data(300, 3)
    layer = LMKANLinear(5, 2, 4, dtype=torch.float64, input_norm="quantile")
    layer.calibrate_placement(x)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    weights = (1e-4, 1e-2, 1.0)
    fits = fit_tables_each(layer, x, y, weights, ridge=1e-4, relative=True)
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())  # copies are fitted
    for (fitted, result), hessian in zip(fits, weights):
        alone = LMKANLinear(5, 2, 4, dtype=torch.float64, input_norm="quantile")
        alone.load_state_dict(before)
        expected = fit_tables(alone, x, y, hessian=hessian, ridge=1e-4, relative=True)
        assert rel_err(fitted.table, alone.table) < 1e-9 and rel_err(fitted.bias, alone.bias) < 1e-9
        assert result.train_rel_error == pytest.approx(expected.train_rel_error, rel=1e-9)
    assert fits[0][1].train_rel_error < fits[2][1].train_rel_error  # a heavier penalty fits the rows less closely


def test_fit_beats_linear_refit_held_out_on_a_nonlinear_target():
    x, y = _data(3000, 2)
    train, held = slice(0, 2400), slice(2400, None)
    linear = nn.Linear(5, 2).double()
    solution = torch.linalg.lstsq(torch.cat([x[train], torch.ones(2400, 1, dtype=x.dtype)], 1), y[train]).solution
    with torch.no_grad():
        linear.weight.copy_(solution[:-1].t())
        linear.bias.copy_(solution[-1])
    layer = LMKANLinear.from_linear(linear, 8, x[train].mean(0), x[train].std(0))
    fit_tables(layer, x[train], y[train], hessian=1e-3, ridge=1e-3, relative=True)
    with torch.no_grad():
        lmkan_err = rel_err(layer(x[held]), y[held])
        linear_err = rel_err(linear(x[held]), y[held])
    assert lmkan_err < 0.6 * linear_err, (lmkan_err, linear_err)


def test_fit_errors_leave_the_layer_untouched():
    x, y = _data(50)
    layer = LMKANLinear(5, 2, 4, dtype=torch.float64)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ShapeError):
        fit_tables(layer, x, y[:40])
    with pytest.raises(ShapeError):
        fit_tables(layer, x[:, :4], y)
    with pytest.raises(ConfigError, match="ridge"):
        fit_tables(layer, x, y, ridge=0.0)
    with pytest.raises(ConfigError, match="LMKANLinear"):
        fit_tables(nn.Linear(5, 2), x, y)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_shrink_pass_fits_lmkan_consumers_and_reports_both_block_errors():
    from lmkan_surgery import LMKANConfig, lmkanify

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 64), nn.CELU(), nn.Linear(64, 64), nn.CELU(), nn.Linear(64, 4))
    gen = torch.Generator().manual_seed(4)
    calibration = [torch.randn(256, 8, generator=gen) * 2 for _ in range(8)]
    config = LMKANConfig(num_grids=6, mode="shrink", width=0.5, input_norm="quantile", skip_defaults=False)
    student, report = lmkanify(model, config, example_inputs=calibration[0][:4], calibration=calibration)
    linear_err = report.validation["heldout_block_linear_refit"]
    lmkan_err = report.validation["heldout_block_lmkan_fit"]
    assert lmkan_err < linear_err, (lmkan_err, linear_err)
    baseline, _ = lmkanify(model, LMKANConfig(num_grids=6, mode="shrink", width=0.5, input_norm="quantile",
                                              skip_defaults=False, shrink_fit="linear"),
                           example_inputs=calibration[0][:4], calibration=calibration)
    held = torch.randn(512, 8, generator=gen) * 2
    with torch.no_grad():
        assert rel_err(student(held), model(held)) < rel_err(baseline(held), model(held))


def test_relative_hessian_weight_scales_with_the_loss():
    """hessian_relative: with targets and the last layer scaled by 1000, every loss term scales by 1000^2 (the
    absolute weight would leave the hidden layer's penalty unscaled)."""
    from lmkan_surgery.distill import TrainConfig, train_lmkan

    x, y = _data(256, 5)
    x, y = x.float(), y.float()
    records = {}
    for relative in (True, False):
        for scale in (1.0, 1000.0):
            torch.manual_seed(7)
            model = nn.Sequential(LMKANLinear(5, 8, 6, input_norm="quantile", init_scale=1.0), LMKANLinear(8, 2, 6))
            model[0].calibrate_placement(x)
            with torch.no_grad():
                model[1].table.mul_(scale)
                model[1].bias.mul_(scale)
            cfg = TrainConfig(epochs=1, batch_size=256, lr=1e-12, warmup=0.0, task="regression", hessian_start=1.0,
                              hessian_relative=relative, progress=False)
            records[relative, scale] = train_lmkan(model, (x, y * scale), None, cfg).history[0]
    small, large = records[True, 1.0], records[True, 1000.0]
    assert large.loss / small.loss == pytest.approx(1e6, rel=1e-3)
    assert large.terms["hessian"] == pytest.approx(small.terms["hessian"], rel=1e-3)
    assert records[False, 1000.0].loss / records[False, 1.0].loss != pytest.approx(1e6, rel=1e-2)


def test_relative_hessian_weight_survives_resume(tmp_path):
    """The loss scale L0 is measured on the first batch and checkpointed: a resumed run equals an uninterrupted one."""
    from lmkan_surgery.distill import TrainConfig, train_lmkan

    class Stop(Exception):
        pass

    def stop_at(step: int) -> None:
        if step == 9:
            raise Stop

    x, y = _data(128, 6)
    x, y = x.float(), y.float()

    def run(folder: str, resume: bool = False, on_step_end=None) -> nn.Module:
        torch.manual_seed(8)
        model = nn.Sequential(LMKANLinear(5, 6, 4, input_norm="quantile", init_scale=1.0), LMKANLinear(6, 2, 4))
        model[0].calibrate_placement(x)
        cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, task="regression", hessian_start=1.0,
                          hessian_relative=True, checkpoint_dir=str(tmp_path / folder), checkpoint_every=4,
                          resume=resume, progress=False)
        train_lmkan(model, (x, y), None, cfg, on_step_end=on_step_end)
        return model

    reference = run("a").state_dict()
    with pytest.raises(Stop):
        run("b", on_step_end=stop_at)
    resumed = run("b", resume=True).state_dict()
    assert all(torch.allclose(reference[k], resumed[k], rtol=0, atol=1e-6) for k in reference)


def test_native_normal_matrix_equals_dense_design_product(monkeypatch):
    """The native D^T D (4 non-zeros per pair) equals the dense design rows' product, far and odd inputs included,
    and a fit through it equals the fit through dense rows (LMKAN_BACKEND=reference: no native kernels)."""
    from lmkan_surgery.ops.dispatch import native_gram
    from lmkan_surgery.passes.fit import _corners, design

    gram_fn = native_gram()
    if gram_fn is None:
        pytest.skip("native CPU kernels unavailable")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(257, 7, generator=gen, dtype=torch.float64) * 2.0
    x[:5] *= 40.0  # far past the grid: extrapolating weights
    layer = LMKANLinear(7, 3, 5, dtype=torch.float64)
    d = design(layer, x)
    gram = torch.zeros(d.shape[1], d.shape[1], dtype=torch.float64)
    for part, last in ((slice(0, 100), False), (slice(100, None), True)):  # streamed: mirrored after the last chunk
        corner, weights = _corners(layer, x[part])
        gram_fn(gram, corner.t().contiguous(), weights.transpose(0, 1).contiguous(), 6, last)
    assert torch.allclose(gram, d.t() @ d, rtol=1e-12, atol=1e-9)

    y = torch.randn(257, 3, generator=gen, dtype=torch.float64)
    native = LMKANLinear(7, 3, 5, dtype=torch.float64)
    dense = LMKANLinear(7, 3, 5, dtype=torch.float64)
    dense.load_state_dict(native.state_dict())
    fit_tables(native, x[5:], y[5:], hessian=1e-3, ridge=1e-3, chunk_rows=100)  # a well-conditioned system
    monkeypatch.setenv("LMKAN_BACKEND", "reference")
    fit_tables(dense, x[5:], y[5:], hessian=1e-3, ridge=1e-3, chunk_rows=100)
    assert rel_err(native.table, dense.table) < 1e-9 and rel_err(native.bias, dense.bias) < 1e-9
