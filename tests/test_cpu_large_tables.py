"""The lookup's forwards for tables larger than L2 (cell-sorted and streamed; the threshold lowered so that small
shapes take them) against float64, far inputs, half tables, 1 vs 2 threads, and the sweep widths' bits."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.ops.reference import forward_reference
from isa import isa_path
from lookup_checks import assert_as_accurate, lookup_inputs, separable_table


LARGE_TABLE_ENV = "LMKAN_CPU_LARGE_TABLE_BYTES"  # tables above it take the large-table forwards
# With the threshold at 0 (and N_out > 64): cell-sorted forward where a block has >= 4 samples per cell on average
# (one block; three blocks of 512, 512, 76 samples; a 130-wide layer with a narrow last sweep), pair ranges below
# that (4 ranges of one pair; 16 ranges of 2-3 pairs; at batch 3 and 12, 14% and up to 59% of a chunk's rows used:
# only those prefetched ahead).
LARGE_PATH_SHAPES = [(300, 5, 3, 77), (1100, 3, 3, 100), (700, 4, 5, 130), (20, 4, 8, 72), (25, 37, 4, 70),
                     (3, 40, 8, 136), (12, 40, 8, 136)]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("shape", LARGE_PATH_SHAPES)
def test_large_table_forwards_match_reference(native, shape, isa, monkeypatch):
    """The forwards for tables larger than L2 (threshold lowered so that small shapes take them), inputs up to 1e3."""
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    x, table, _ = lookup_inputs(shape, seed=sum(shape))
    with isa_path(native, isa):
        y = native.forward(x, table)
    assert_as_accurate(y, forward_reference(x, table), forward_reference(x.double(), table.double()))


@pytest.mark.parametrize("shape", [(300, 5, 3, 77), (700, 4, 5, 130)])
def test_streamed_forward_with_the_cell_sorted_forward_off(native, shape, monkeypatch):
    """LMKAN_CPU_SORTED_FORWARD=0 (the benchmarks' "before" switch) gives the streamed forward on these shapes."""
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    monkeypatch.setenv("LMKAN_CPU_SORTED_FORWARD", "0")
    x, table, _ = lookup_inputs(shape, seed=sum(shape))
    assert_as_accurate(native.forward(x, table), forward_reference(x, table),
                        forward_reference(x.double(), table.double()))


@pytest.mark.parametrize("threshold", ["0", ""])  # the large-table forwards, then the default (fused) path
def test_far_inputs_stay_finite_on_every_forward_path(native, threshold, monkeypatch):
    """|x| up to 1e30 on an exact table (zero cross term): t1 t2 overflows to inf, and inf x 0 must not become NaN;
    the output keeps float32 accuracy. Batches of 400 (cell-sorted) and 20 (streamed) samples."""
    monkeypatch.setenv(LARGE_TABLE_ENV, threshold)
    pairs, grids, n_out = 4, 3, 70
    gen = torch.Generator().manual_seed(13)
    table = separable_table(pairs, grids, n_out, gen)
    for batch in (400, 20):
        x = 2 * torch.rand(batch, 2 * pairs, generator=gen) - 1
        x = torch.where(torch.rand(batch, 2 * pairs, generator=gen) < 0.3, 1e30 * x, 3 * x)
        y = native.forward(x, table).double()
        truth = forward_reference(x.double(), table.double())
        assert torch.isfinite(y).all()
        assert ((y - truth).abs() <= 1e-5 * truth.abs().max()).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_tables_on_the_large_table_forwards(native, dtype, monkeypatch):
    """A half table read as it is (not widened: threshold 0) on the cell-sorted and streamed forwards gives the float32
    table's bits, and 1 and 2 threads agree bitwise on the cell-sorted forward (above the 2^17-evaluation serial cut)."""
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    threads = torch.get_num_threads()
    try:
        for shape in [(2000, 5, 3, 77), (20, 4, 8, 72)]:
            x, table, _ = lookup_inputs(shape, seed=shape[0])
            half = table.to(dtype)
            torch.set_num_threads(1)
            one = native.forward(x, half)
            torch.set_num_threads(2)
            two = native.forward(x, half)
            assert torch.equal(one, two) and torch.equal(two, native.forward(x, half.float()))
    finally:
        torch.set_num_threads(threads)


def test_large_table_forwards_one_and_two_threads_bitwise(native, monkeypatch):
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    threads = torch.get_num_threads()
    try:
        for shape in [(4000, 3, 3, 130), (30, 40, 8, 136)]:  # cell-sorted (8 blocks), streamed
            x, table, _ = lookup_inputs(shape, seed=5)
            per_count = []
            for count in (1, 2):
                torch.set_num_threads(count)
                per_count.append(native.forward(x, table))
            assert torch.equal(*per_count)
    finally:
        torch.set_num_threads(threads)


def _bits(t):
    return t.view(torch.int32)  # NaN lanes compare too


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cell_sorted_kernels_give_the_same_bits_on_every_sweep_width(native, dtype, monkeypatch):
    """The cell-sorted forward and table gradient sweep 64 output columns in zmm vectors with prefetched rows on the
    AVX-512 path and 16 columns in ymm on the AVX2 path: lane by lane the same operations, so the same bits. G = 26
    (729 cells; forward blocks of 8192 and 808 samples, gradient blocks of 4096, 4096 and 808), 77 outputs (a 64-wide
    sweep, an 8-wide one and a narrow rest), 10% of the inputs up to 1e3 and 3% up to 1e30 away (far pairs, inf and
    NaN outputs); a float16 table read as it is gives the bits of its float32 values."""
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    batch, pairs, grids, n_out = 9000, 2, 26, 77
    gen = torch.Generator().manual_seed(26)
    x = 3 * torch.randn(batch, 2 * pairs, generator=gen)
    pick = torch.rand(batch, 2 * pairs, generator=gen)
    x = torch.where(pick < 0.1, 1e3 * (2 * torch.rand(batch, 2 * pairs, generator=gen) - 1), x)
    x = torch.where(pick > 0.97, 1e30 * (2 * torch.rand(batch, 2 * pairs, generator=gen) - 1), x)
    table = torch.randn(pairs, grids + 1, grids + 1, n_out, generator=gen).to(dtype)
    grad_out = torch.randn(batch, n_out, generator=gen)
    out = {}
    for isa in ("avx512", "avx2"):
        with isa_path(native, isa):
            out[isa] = (native.forward(x, table), native.backward(grad_out, x, table, False, True)[1])
    for wide, narrow in zip(out["avx512"], out["avx2"]):
        assert torch.equal(_bits(wide.float()), _bits(narrow.float()))
    y = out["avx512"][0]
    assert torch.equal(_bits(y), _bits(native.forward(x, table.float())))
    near = (x.abs() < 1e3).all(dim=1)  # samples with every pair near the grid: finite, within float32's accuracy
    assert_as_accurate(y[near], forward_reference(x[near], table.float()),
                        forward_reference(x[near].double(), table.double()))


# The cell-sorted forward's team shapes (threshold 0): blocks of 512 samples (9, the last of 3), pair groups of 8 + 3
# (two alternating shared buffers), tiles 64, 64, 64, 8 (unequal shares on 2 and 3 threads); then blocks of 4096 + 4
# samples, 11 tiles of a 600-wide layer (spans of 4 tiles per thread: 3 spans on 1 thread, 2 on 2, 1 on 3).
TEAM_SHAPES = [(4099, 11, 3, 200), (4100, 2, 16, 600)]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("shape", TEAM_SHAPES)
def test_cell_sorted_forward_shares_sorts_and_tiles_between_threads(native, shape, isa, monkeypatch):
    """The threads sort each pair group between them into shared buffers and run their own tiles: 1, 2 and 3 threads
    give the same bits, those of the cell-sorted convolution of the same inputs as 1x1 pixels (the same summation
    order), within the float64 tolerance; inputs up to 1e3 and 2% up to 1e30 (far pairs), a float16 table read as it
    is gives its float32 values' bits."""
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    x, table, _ = lookup_inputs(shape, seed=shape[0])
    far = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.02
    x = torch.where(far, 1e30 * torch.sign(x), x)
    threads = torch.get_num_threads()
    try:
        with isa_path(native, isa):
            per_count = []
            for count in (1, 2, 3):
                torch.set_num_threads(count)
                per_count.append(native.forward(x, table))
            conv = native.conv2d_forward(x[:, :, None, None], table[None], [1, 1], [1, 1], [1, 1])
            half = native.forward(x, table.half())
            as_float = native.forward(x, table.half().float())
    finally:
        torch.set_num_threads(threads)
    y = per_count[0]
    for other in per_count[1:] + [conv.reshape(y.shape)]:
        assert torch.equal(_bits(y), _bits(other))
    assert torch.equal(_bits(half), _bits(as_float))
    near = (x.abs() < 1e3).all(dim=1)
    assert_as_accurate(y[near], forward_reference(x[near], table), forward_reference(x[near].double(), table.double()))
