"""The native CPU kernels against the pure-PyTorch reference, their determinism, the build and the fallback path."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from lmkan_surgery.errors import KernelBuildError
from lmkan_surgery.grid import grid_node_values
from lmkan_surgery.kernels import build
from lmkan_surgery.ops import dispatch, lmkan_lookup
from lmkan_surgery.ops.reference import backward_reference, forward_reference
from isa import isa_path
from lookup_checks import assert_as_accurate, check_against_reference, lookup_inputs, separable_table

# (B, P, G, N_out): odd N_out, one pair, one sample, every tile width and the narrow rest, both forward paths
# (fused: small tables; streamed: tables over 8 MB with more than one 64-wide output tile).
SHAPES = [
    (1, 1, 3, 1),
    (5, 1, 8, 7),
    (1, 3, 28, 13),
    (17, 4, 64, 5),
    (33, 6, 8, 127),
    (64, 5, 28, 200),
    (9, 2, 3, 8),
    (40, 64, 26, 72),  # 10.7 MB table: streamed path
    (600, 3, 3, 20),  # several table-gradient sample blocks (256, 256, 88 samples)
    (1100, 3, 8, 37),  # grad_x over cell differences (B >= 8 G^2), a masked last vector
]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_reference(native, shape, isa):
    """Every instruction-set path this machine supports (the others are skipped)."""
    x, table, grad_out = lookup_inputs(shape, seed=hash(shape) % 1000)
    with isa_path(native, isa):
        check_against_reference(native, x, table, grad_out)


# Runs in a second process with LMKAN_CPU_EXP_CELLS=1: forward and both gradients of the saved cases on every path.
_EXP_CELLS_RUN = """
import sys, torch
from lmkan_surgery.kernels import build
native, cases, out = build.load_native("cpu"), torch.load(sys.argv[1]), {}
for isa in ("avx512", "avx2", "generic"):
    try:
        native.select_isa(isa)
    except RuntimeError:
        continue
    out[isa] = [(native.forward(x, t), *native.backward(g, x, t, True, True)) for x, t, g in cases]
torch.save(out, sys.argv[2])
"""


def _node_neighbourhood_cases(gen):
    """(x, table, grad_out) per G = 3..16 and N_out in (1, 13, 64) (few-output, narrow and vector-tile paths), x
    drawn from every grid node and the 8 floats either side of it (where the cell thresholds lie) plus NaN."""
    cases = []
    for grids in range(3, 17):
        nodes = torch.tensor(grid_node_values(grids), dtype=torch.float32)
        near, down, up = [nodes], nodes, nodes
        for _ in range(8):
            down, up = torch.nextafter(down, down - 1), torch.nextafter(up, up + 1)
            near += [down, up]
        pool = torch.cat(near + [torch.tensor([float("nan")])])
        for n_out in (1, 13, 64):
            x = pool[torch.randint(len(pool), (40, 6), generator=gen)]
            cases.append((x, torch.randn(3, grids + 1, grids + 1, n_out, generator=gen),
                          torch.randn(40, n_out, generator=gen)))
    return cases


def test_counted_cells_equal_the_exp_cells_at_every_node(native, tmp_path):
    """For G <= 16 the cell is a count of thresholds instead of cell_of's exp (LMKAN_CPU_EXP_CELLS=1 turns the count
    off, in a second process): at every grid node and 8 floats either side, forward, grad_x and grad_table are
    bitwise equal both ways on every path, for 1, 13 and 64 outputs."""
    cases = _node_neighbourhood_cases(torch.Generator().manual_seed(21))
    torch.save(cases, tmp_path / "cases.pt")
    env = dict(os.environ, LMKAN_CPU_EXP_CELLS="1")
    done = subprocess.run([sys.executable, "-c", _EXP_CELLS_RUN, str(tmp_path / "cases.pt"), str(tmp_path / "exp.pt")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    exp_runs = torch.load(tmp_path / "exp.pt")
    assert exp_runs
    for isa, runs in exp_runs.items():
        with isa_path(native, isa):
            for (x, table, grad_out), expected in zip(cases, runs):
                got = (native.forward(x, table), *native.backward(grad_out, x, table, True, True))
                for a, b in zip(got, expected):
                    assert torch.equal(a.nan_to_num(), b.nan_to_num()), (isa, table.shape)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_grad_x_over_cell_differences_gives_the_table_row_bits(native, isa, dtype):
    """At G = 8 with few outputs (29: the table gradient does not sort the records) grad_x runs over per-call cell
    differences from 512 samples on (8 G^2) and over the table rows below them; each sample's gradient depends on
    that sample alone, so the first 323 samples get the same bits either way. (With more outputs the table gradient
    sorts the records and grad_x runs over them from 324 samples on: test_cpu_sorted_backward.)"""
    x, table, grad_out = lookup_inputs((512, 5, 8, 29), seed=31)
    table = table.to(dtype)
    with isa_path(native, isa):
        gx_diff, _ = native.backward(grad_out, x, table, True, False)
        gx_rows, _ = native.backward(grad_out[:323].contiguous(), x[:323].contiguous(), table, True, False)
    assert torch.equal(gx_diff[:323], gx_rows)


# (B, P, G, N_out) on the unsorted table gradient (grad_table_by_samples: at most 32 outputs, a table of 1 MB or
# less): 32 outputs (two zmm steps on the AVX-512 path), 24 (one zmm, one ymm step), 20 (one zmm step, a masked rest
# of 4) and 16 (one zmm step; 1001 samples in two ranges, 501 and 500).
BY_SAMPLES_SHAPES = [(700, 3, 8, 32), (700, 3, 8, 24), (300, 2, 4, 20), (1001, 4, 16, 16)]


@pytest.mark.parametrize("shape", BY_SAMPLES_SHAPES)
def test_table_gradient_by_samples_same_bits_on_every_vector_width(native, shape):
    """The AVX-512 path's 16-column steps (zmm) add each element as the AVX2 path's 8-column ones do: bitwise equal,
    on 1 and 2 threads, and within the float64 tolerance; fails when a zmm step writes another row or column."""
    x, table, grad_out = lookup_inputs(shape, seed=shape[3] + 5)
    out = []
    threads = torch.get_num_threads()
    try:
        for isa in ("avx512", "avx2"):
            with isa_path(native, isa):
                for count in (1, 2):
                    torch.set_num_threads(count)
                    out.append(native.backward(grad_out, x, table, False, True)[1])
    finally:
        torch.set_num_threads(threads)
    for other in out[1:]:
        assert torch.equal(out[0], other)
    gt32 = backward_reference(grad_out, x, table, False, True)[1]
    gt64 = backward_reference(grad_out.double(), x.double(), table.double(), False, True)[1]
    assert_as_accurate(out[0], gt32, gt64)


# grad_x over the cell-sorted records (a sort block of >= 4 samples per cell, cell differences too large for L2 or
# too few samples for them): one block with a masked last vector; two blocks (2048 + 452) at 200 outputs; two
# blocks (4096 + 104) at G = 23 with 9 outputs (one vector and a 1-column tail).
RUNS_SHAPES = [(400, 5, 8, 45), (2500, 2, 16, 200), (4200, 2, 23, 9)]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("shape", RUNS_SHAPES)
def test_grad_x_over_sorted_runs_matches_reference(native, shape, isa):
    """grad_x alone and with the table gradient (both share the sort) against float64, inputs up to 1e3 and 1e20
    away (near and far records) and NaN rows (NaN exactly where the reference has it); a float16 table gives the
    float32 table's bits, and 1 and 2 threads agree bitwise."""
    threads = torch.get_num_threads()
    for far in (1e3, 1e20):
        x, table, grad_out = lookup_inputs(shape, seed=sum(shape), far=far)
        x[3, 1] = float("nan")
        half = table.to(torch.float16)
        with isa_path(native, isa):
            gx_alone, _ = native.backward(grad_out, x, table, True, False)
            gx, _ = native.backward(grad_out, x, table, True, True)
            gx_half, _ = native.backward(grad_out, x, half, True, False)
            gx_half32, _ = native.backward(grad_out, x, half.float(), True, False)
            torch.set_num_threads(1)
            gx_one, _ = native.backward(grad_out, x, table, True, False)
            torch.set_num_threads(2)
            gx_two, _ = native.backward(grad_out, x, table, True, False)
            torch.set_num_threads(threads)
        assert torch.equal(gx_alone.nan_to_num(), gx.nan_to_num())
        assert torch.equal(gx_one.nan_to_num(), gx_two.nan_to_num())
        assert torch.equal(gx_half.nan_to_num(), gx_half32.nan_to_num())
        gx32 = backward_reference(grad_out, x, table, True, False)[0]
        gx64 = backward_reference(grad_out.double(), x.double(), table.double(), True, False)[0]
        assert torch.equal(torch.isnan(gx), torch.isnan(gx64)) and torch.isnan(gx[3]).any()
        keep = ~torch.isnan(gx64)
        assert_as_accurate(gx[keep], gx32[keep], gx64[keep])


def test_auto_picks_the_best_supported_path(native):
    supported = []
    for isa in ("avx512", "avx2", "generic"):
        try:
            native.select_isa(isa)
            supported.append(isa)
        except RuntimeError:
            pass
    native.select_isa("auto")
    assert "generic" in supported and native.isa() == supported[0]
    with pytest.raises(RuntimeError):
        native.select_isa("sse9")


def test_only_requested_gradients(native):
    x, table, grad_out = lookup_inputs((6, 2, 8, 9), seed=1)
    grad_x, grad_table = native.backward(grad_out, x, table, True, False)
    assert grad_x.shape == x.shape and grad_table.numel() == 0
    grad_x, grad_table = native.backward(grad_out, x, table, False, True)
    assert grad_x.numel() == 0 and grad_table.shape == table.shape


def test_special_inputs(native):
    """Empty batch, infinities and exact node positions do not crash or read out of bounds."""
    table = torch.randn(2, 9, 9, 3)
    assert native.forward(torch.zeros(0, 4), table).shape == (0, 3)
    _, grad_table = native.backward(torch.zeros(0, 3), torch.zeros(0, 4), table, True, True)
    assert torch.equal(grad_table, torch.zeros_like(table))
    x = torch.tensor([[float("inf"), 0.0, -float("inf"), float("nan")]])
    y = native.forward(x, table)
    assert y.shape == (1, 3)
    nodes = torch.tensor([-1.3862943611198906, 0.0, 0.6931471805599453, 2.0794415416798357])
    x = nodes.repeat(2).reshape(2, 4)
    assert_as_accurate(native.forward(x, table), forward_reference(x, table), forward_reference(x.double(), table.double()))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_forward_pair_groups_and_nan_rows(native, isa):
    """The forward pre-pass works on groups of 8 pairs (the last one zero-padded): P around multiples of 8 match the
    reference, and a NaN (inf) input makes its sample's outputs NaN (non-finite) without touching the other samples."""
    with isa_path(native, isa):
        for pairs in (7, 8, 9, 16, 17):
            x, table, _ = lookup_inputs((23, pairs, 8, 24), seed=pairs)
            x[5, 2 * pairs - 1] = float("nan")
            x[9, 0] = float("inf")
            y = native.forward(x, table)
            assert torch.isnan(y[5]).all() and not torch.isfinite(y[9]).any()  # inf extrapolates to +-inf or NaN
            keep = torch.ones(23, dtype=torch.bool)
            keep[[5, 9]] = False
            xk = x[keep]
            assert_as_accurate(y[keep], forward_reference(xk, table), forward_reference(xk.double(), table.double()))


def test_exact_linear_table_survives_extrapolation(native):
    """A table T = A[i] + B[j] with zero cross term stays exact to 1e-5 for |x| up to 1e3 (exact-init layers)."""
    pairs, grids, n_out, batch = 8, 8, 16, 256
    gen = torch.Generator().manual_seed(3)
    table = separable_table(pairs, grids, n_out, gen)  # A + B and all differences exact in float32
    cross = table[:, 1:, 1:] - table[:, 1:, :-1] - table[:, :-1, 1:] + table[:, :-1, :-1]
    assert torch.count_nonzero(cross) == 0
    x = 1e3 * (2 * torch.rand(batch, 2 * pairs, generator=gen) - 1)
    y = native.forward(x, table).double()
    truth = forward_reference(x.double(), table.double())
    err = (y - truth).abs()
    assert err.max() <= 1e-6 * truth.abs().max()  # float32 rounding only (~1e-7), no cancellation blow-up
    assert (err / truth.abs().clamp_min(1e-2 * truth.abs().max())).max() <= 1e-5


# fused path read as half (B < 4 (G+1)^2), a narrow last tile, fused path widened once (B >= 4 (G+1)^2), and the
# streamed path (a 13 MB half table with 3 output tiles)
HALF_SHAPES = [(33, 6, 8, 127), (5, 3, 8, 5), (300, 4, 5, 20), (12, 64, 26, 136)]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", HALF_SHAPES)
def test_half_tables_give_the_float32_kernels_bits(native, shape, dtype, isa):
    """A float16/bfloat16 table is converted exactly and accumulated in float32: the forward is bitwise that of the
    float32 kernel on the same values, grad_x as accurate as float32 (the compiler may contract the scalar tail of
    its dot products differently per table type), and the table gradient the float32 one rounded once."""
    x, table, grad_out = lookup_inputs(shape, seed=sum(shape))
    half = table.to(dtype)
    same = half.float()
    with isa_path(native, isa):
        y, (gx, gt) = native.forward(x, half), native.backward(grad_out, x, half, True, True)
        y32, (_, gt32) = native.forward(x, same), native.backward(grad_out, x, same, True, True)
    assert torch.equal(y, y32)
    assert gt.dtype == dtype and torch.equal(gt, gt32.to(dtype))
    assert_as_accurate(y, forward_reference(x, same), forward_reference(x.double(), same.double()))
    assert_as_accurate(gx, backward_reference(grad_out, x, same, True, False)[0],
                        backward_reference(grad_out.double(), x.double(), same.double(), True, False)[0])


@pytest.mark.parametrize("dtype, rel", [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)])
def test_half_tables_stay_within_the_rounding_bound_of_float32(native, dtype, rel):
    """For inputs inside the grid (bilinear weights in [0, 1], summing to 1) a half table changes each output by at
    most P x the largest table rounding error, rel x max|T| per pair (rel: 2^-11 float16, 2^-8 bfloat16)."""
    pairs, grids, n_out = 16, 8, 40
    gen = torch.Generator().manual_seed(5)
    x = 2.6 * torch.rand(300, 2 * pairs, generator=gen) - 1.3  # inside the inner nodes +-ln 4
    table = torch.randn(pairs, grids + 1, grids + 1, n_out, generator=gen)
    diff = (native.forward(x, table.to(dtype)).double() - forward_reference(x.double(), table.double())).abs()
    bound = pairs * rel * table.abs().max().item()
    assert diff.max().item() <= bound + 1e-5 * table.abs().max().item()
    assert diff.max().item() > 0  # the rounding is real: the test can fail


def test_one_and_two_threads_are_bitwise_equal(native):
    threads = torch.get_num_threads()
    results = []
    # above the kernels' serial cut (2^17 evaluations: smaller calls run on one thread whatever is asked)
    for shape in [(400, 8, 8, 130), (40, 64, 26, 72), (4000, 3, 3, 20)]:
        x, table, grad_out = lookup_inputs(shape, seed=7)
        table = table.to(torch.bfloat16) if shape[0] == 400 else table  # a half table (widened in parallel)
        per_count = []
        for count in (1, 2):
            torch.set_num_threads(count)
            per_count.append((native.forward(x, table), *native.backward(grad_out, x, table, True, True)))
        results.append(per_count)
    torch.set_num_threads(threads)
    for one, two in results:
        for a, b in zip(one, two):
            assert torch.equal(a, b)


def test_public_op_with_leading_dims_and_noncontiguous_input(native, monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "cpu")
    gen = torch.Generator().manual_seed(11)
    base = 4 * torch.randn(3, 5, 12, generator=gen)
    x = base[:, :, ::2]  # non-contiguous, 6 features = 3 pairs
    assert not x.is_contiguous()
    table = torch.randn(3, 9, 9, 7, generator=gen)
    x_req, t_req = x.clone().requires_grad_(True), table.clone().requires_grad_(True)
    y = lmkan_lookup(x_req, t_req)
    assert y.shape == (3, 5, 7)
    grads = torch.autograd.grad(y, [x_req, t_req], torch.ones_like(y))
    flat = x.reshape(-1, 6)
    assert_as_accurate(y.reshape(-1, 7), forward_reference(flat, table), forward_reference(flat.double(), table.double()))
    gx32, gt32 = backward_reference(torch.ones(15, 7), flat, table)
    gx64, gt64 = backward_reference(torch.ones(15, 7, dtype=torch.float64), flat.double(), table.double())
    assert_as_accurate(grads[0].reshape(-1, 6), gx32, gx64)
    assert_as_accurate(grads[1], gt32, gt64)


def test_default_dispatch_uses_native(native, monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    x, table, _ = lookup_inputs((4, 2, 8, 3), seed=2)
    assert dispatch.backend_for(x, table).name == "cpu"
    assert dispatch.backend_for(x.double(), table.double()).name == "reference"


def test_disabled_build_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv(build.DISABLE_ENV, "1")
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_native_cache", {})
    with pytest.raises(KernelBuildError, match=build.DISABLE_ENV):
        build.load_native("cpu")
    x, table, _ = lookup_inputs((8, 3, 8, 5), seed=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = lmkan_lookup(x, table)
        y2 = lmkan_lookup(x, table)
    messages = [str(w.message) for w in caught if "native cpu kernels unavailable" in str(w.message)]
    assert len(messages) == 1 and build.DISABLE_ENV in messages[0]
    assert torch.equal(y1, forward_reference(x, table)) and torch.equal(y1, y2)
    monkeypatch.setenv(dispatch.BACKEND_ENV, "cpu")
    with pytest.raises(KernelBuildError):
        lmkan_lookup(x, table)
