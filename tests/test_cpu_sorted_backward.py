"""The Linear backward over cell-sorted records. The x gradient over runs (grad_x_runs: G = 26 at 77-128 outputs or
blocks below 8 samples per cell, G = 8 where the table gradient sorts the records): on the AVX-512 path two samples' dot products share one zmm per difference row,
and the pair's table rows are streamed ahead of the runs where a block has a sample per cell or more; same bits as
the AVX2 path, within the float64 tolerance, 1 vs 2 threads bitwise equal, half tables. The table gradient's slices
accumulated straight into the gradient (outputs a multiple of 16) or packed and copied out (others), and from
LMKAN_CPU_LARGE_TABLE_BYTES on packed and streamed out (non-temporal stores) with the same bits."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.ops.reference import backward_reference
from isa import isa_path
from lookup_checks import assert_as_accurate

# (batch, pairs, G, N_out), each on grad_x_runs (cell blocks of >= 4 samples per cell, no cell differences in L2):
# blocks of 4096 + 404 samples (the table rows streamed in the first, not in the second: 404 < 729 cells) with 77
# outputs (a masked 5-column rest); one block of 3000 with 9 outputs (one 8-column step and a 1-column rest); blocks
# of 4096 + 4096 + 8 with 128 outputs (the benchmark's width; 2 MiB of output-gradient rows a block: the only shape
# here whose rows are prefetched, kHotRowBytes).
# At G = 8 the cell differences fit L2, but the table gradient sorts the records (more than 32 outputs): blocks of
# 648 samples (4 x 648 + 408) with 96 outputs, and 1000 samples (648 + 352) with 44 (a masked 4-column rest); 11
# pairs (tasks of 8 + 3 pairs, grad_x written in place) over 1500 samples (648 + 648 + 204) with 40 outputs.
RUNS_SHAPES = [(4500, 3, 26, 77), (3000, 2, 26, 9), (8200, 2, 26, 128), (3000, 3, 8, 96), (1000, 2, 8, 44),
               (1500, 11, 8, 40)]


def _bits(t):
    return t.view(torch.int32)  # NaN lanes compare too


def _inputs(shape, seed):
    """x mostly on the grid (runs of several samples per cell), 10% up to 1e3 and 2% up to 1e30 away (far pairs:
    zero or non-finite gradients), a random table and output gradient."""
    batch, pairs, grids, n_out = shape
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(batch, 2 * pairs, generator=gen)
    pick = torch.rand(batch, 2 * pairs, generator=gen)
    x = torch.where(pick < 0.1, 1e3 * (2 * torch.rand(batch, 2 * pairs, generator=gen) - 1), x)
    x = torch.where(pick > 0.98, 1e30 * (2 * torch.rand(batch, 2 * pairs, generator=gen) - 1), x)
    table = torch.randn(pairs, grids + 1, grids + 1, n_out, generator=gen)
    return x, table, torch.randn(batch, n_out, generator=gen)


def _one_bits_everywhere(native, grad_out, x, table, need_x, isas=("avx512", "avx2")):
    """The backward's x gradient (need_x) or table gradient on each ISA path in `isas` at 1 and 2 threads, checked
    bitwise equal to one another; returns it."""
    threads = torch.get_num_threads()
    out = []
    try:
        for isa in isas:
            with isa_path(native, isa):
                for count in (1, 2):
                    torch.set_num_threads(count)
                    out.append(native.backward(grad_out, x, table, need_x, not need_x)[0 if need_x else 1])
    finally:
        torch.set_num_threads(threads)
    for other in out[1:]:
        assert torch.equal(_bits(out[0]), _bits(other))
    return out[0]


@pytest.mark.parametrize("shape", RUNS_SHAPES)
def test_x_gradient_runs_same_bits_on_every_vector_width(native, shape):
    """The AVX-512 path (two samples per zmm) gives the AVX2 path's bits (lane by lane the same sums), on 1 and 2
    threads, and the near samples' gradients are within the float64 tolerance; a float16 table gives the bits of its
    float32 values. Fails when the zmm halves are swapped or the sums are associated another way."""
    x, table, grad_out = _inputs(shape, seed=shape[0] + shape[3])
    grad_x = _one_bits_everywhere(native, grad_out, x, table, True)
    for isa in ("avx512", "avx2"):
        with isa_path(native, isa):
            half = native.backward(grad_out, x, table.half(), True, False)[0]
            as_float = native.backward(grad_out, x, table.half().float(), True, False)[0]
            assert torch.equal(_bits(half), _bits(as_float))
    near = (x.abs() < 1e3).all(dim=1)
    gx32 = backward_reference(grad_out[near], x[near], table, True, False)[0]
    gx64 = backward_reference(grad_out[near].double(), x[near].double(), table.double(), True, False)[0]
    assert_as_accurate(grad_x[near], gx32, gx64)


def test_x_gradient_runs_generic_path_within_tolerance(native):
    """The generic path (no FMA: other bits) of the same kernel within the float64 tolerance, 1 vs 2 threads equal."""
    shape = RUNS_SHAPES[0]
    x, table, grad_out = _inputs(shape, seed=7)
    x = x.clamp(-1e3, 1e3)
    grad_x = _one_bits_everywhere(native, grad_out, x, table, True, isas=("generic",))
    gx32 = backward_reference(grad_out, x, table, True, False)[0]
    gx64 = backward_reference(grad_out.double(), x.double(), table.double(), True, False)[0]
    assert_as_accurate(grad_x, gx32, gx64)


# (batch, pairs, G, N_out) on the cell-sorted table gradient: 128 and 80 outputs (multiples of 16: tiles 64 + 64 and
# 64 + 16 accumulated straight into the gradient rows), 77 (tiles 64 + 13: packed slices, copied out); 5 pairs in
# chunks of 2, 2, 1 on 2 threads.
TABLE_SHAPES = [(4500, 5, 26, 128), (2000, 5, 12, 80), (2000, 5, 12, 77)]


@pytest.mark.parametrize("shape", TABLE_SHAPES)
def test_table_gradient_straight_or_packed_slices(native, shape):
    """The table gradient within the float64 tolerance (inputs up to 1e3 away: far pairs' extrapolated weights), 1 vs
    2 threads bitwise equal, the AVX-512 path's bits those of the AVX2 path; fails when a straight slice is written
    with the packed row stride or offset."""
    x, table, grad_out = _inputs(shape, seed=shape[3])
    x = x.clamp(-1e3, 1e3)
    grad_table = _one_bits_everywhere(native, grad_out, x, table, False)
    gt32 = backward_reference(grad_out, x, table, False, True)[1]
    gt64 = backward_reference(grad_out.double(), x.double(), table.double(), False, True)[1]
    assert_as_accurate(grad_table, gt32, gt64)


@pytest.mark.parametrize("n_out", [77, 9, 128])
def test_x_gradient_runs_same_bits_at_every_place_in_a_run(native, n_out):
    """A run's first two samples are summed against the cell's corner rows (the difference rows formed in registers),
    the next ones eight (AVX-512) or four, then four, then two at a time against the stored difference rows: each
    sample's sums keep one order wherever it sits. 1400 distinct samples, each repeated 1-9 times (with its
    output-gradient row) at random places in a batch of 4200: runs of every length, the copies at every slot; all
    copies bitwise equal, AVX-512 = AVX2, 1 vs 2 threads, within the float64 tolerance. Fails when a slot's sums go
    to another sample (checked: a four-wide step's second pair written with the first's sums; an eight-wide step's
    fourth pair with the third's) or a slot's difference rows are not the cell's."""
    x, table, grad_out = _inputs((1400, 2, 26, n_out), seed=n_out)
    x = x.clamp(-1e3, 1e3)
    gen = torch.Generator().manual_seed(3)
    copies = torch.repeat_interleave(torch.arange(1400), torch.randint(1, 10, (1400,), generator=gen))
    copies = copies[torch.randperm(copies.numel(), generator=gen)][:4200]
    x, grad_out = x[copies], grad_out[copies]
    grad_x = _one_bits_everywhere(native, grad_out, x, table, True)
    order = torch.argsort(copies, stable=True)
    same = copies[order][1:] == copies[order][:-1]  # neighbours in the sorted order that are copies of one sample
    assert torch.equal(_bits(grad_x[order][1:][same]), _bits(grad_x[order][:-1][same]))
    gx32 = backward_reference(grad_out, x, table, True, False)[0]
    gx64 = backward_reference(grad_out.double(), x.double(), table.double(), True, False)[0]
    assert_as_accurate(grad_x, gx32, gx64)


LARGE_TABLE_ENV = "LMKAN_CPU_LARGE_TABLE_BYTES"  # "0": every table gradient whose rows are whole lines streamed


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("shape", TABLE_SHAPES)
def test_table_gradient_streamed_same_bits_as_in_place(native, shape, isa, monkeypatch):
    """Threshold 0: the 128- and 80-output gradients (rows of whole lines) are accumulated in the packed slices and
    streamed out, the 77-output one packed and copied as before; each gives the bits of the default threshold (these
    gradients are small: straight or packed in place) on 1 and 2 threads, twice in a row (the second call on the
    first one's slice buffers). Fails when a streamed row goes to another row or column offset, or a slice's rows
    are not all written."""
    x, table, grad_out = _inputs(shape, seed=shape[3] + 1)
    x = x.clamp(-1e3, 1e3)
    monkeypatch.delenv(LARGE_TABLE_ENV, raising=False)
    with isa_path(native, isa):
        in_place = native.backward(grad_out, x, table, False, True)[1]
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    for _ in range(2):
        poison = torch.full_like(table, float("nan"))  # freed just before: an unwritten row would likely read NaN
        del poison
        streamed = _one_bits_everywhere(native, grad_out, x, table, False, isas=(isa,))
        assert torch.equal(_bits(streamed), _bits(in_place))
