"""The direct CPU convolution's forward paths (cell-sorted runs, sort keys, pair ranges over large tables) against
a float64 reference: each path's bits on every ISA, 1 vs 2 threads and both layouts, far inputs, half tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmkan_surgery.nn import LMKANConv2d
from lmkan_surgery.ops.reference import forward_reference

from conv_oracles import forward_at_threads_and_layouts, reference_conv
from isa import isa_path, on_avx512_and_avx2


def _assert_both_paths_give_the_same_bits(wide: list, narrow: list, layers: list, xs: list) -> None:
    """Per case: the outputs of each ISA path (a list over threads and layouts) bitwise equal, the two paths bitwise
    equal, and within float64's tolerance of the reference."""
    for first, second, layer, x in zip(wide, narrow, layers, xs):
        assert all(torch.equal(y, first[0]) for y in first), layer
        assert all(torch.equal(y, second[0]) for y in second), layer
        assert torch.equal(first[0], second[0]), layer
        truth = reference_conv(layer, x)
        assert (first[0].double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_direct_conv_cell_sorted_path(native, isa, monkeypatch):
    """Group tables over the cell-sorted threshold (lowered to 0 here) with 64 outputs or more and enough pixels
    per cell take the cell-sorted accumulation: 2 groups of 70 outputs (a tile and a narrow rest), 400 pixels (one
    pixel block: at 2 threads its two tiles run as two tasks), 800 (one block, two at 2 threads) and 1200 (two
    blocks); 2 groups of exactly one 64-output tile (resnet18's layer1 shape class), 800 pixels; both layouts, 20%
    of the inputs far outside the grid, a float16 table, 1 and 2 threads."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    with isa_path(native, isa):
        torch.manual_seed(11)
        for dtype, images, outputs in ((None, 1, 140), (torch.float16, 2, 140), (None, 3, 140), (None, 2, 128)):
            layer = LMKANConv2d(6, outputs, 3, padding=1, groups=2, num_grids=5, init_scale=2.0, table_dtype=dtype)
            with torch.no_grad():
                layer.bias.normal_()
            x = 3 * torch.randn(images, 6, 20, 20)
            x = torch.where(torch.rand(x.shape) < 0.2, 1e3 * (2 * torch.rand(x.shape) - 1), x)
            truth = reference_conv(layer, x)
            outs = forward_at_threads_and_layouts(layer, x)
            assert torch.equal(outs[0], outs[1])
            for y in outs:
                assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_batch_one_takes_the_cell_sorted_path_from_two_pixels_per_cell(native, isa, monkeypatch):
    """The direct convolution's cell-sorted forward runs from 2 pixels per cell on average (the lookup's threshold
    is 4): one 14x14 image at G = 8 (196 pixels over 81 cells, resnet18's layer3 at batch 1) gives the bits of the
    same image inside a batch of 3 (588 pixels: cell-sorted either way, one block each, so the same two pair ranges
    each adding its pairs in order from zero), where the streamed path (pair ranges) summed differently. 140
    outputs (two tiles and a narrow rest), 45 pairs (an odd patch), 15% of the inputs far outside the grid, float32
    and float16 tables, 1 and 2 threads and both layouts; against float64."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    with isa_path(native, isa):
        torch.manual_seed(17)
        for dtype in (None, torch.float16):
            layer = LMKANConv2d(10, 140, 3, padding=1, num_grids=8, init_scale=2.0, table_dtype=dtype).eval()
            x = 2 * torch.randn(3, 10, 14, 14)
            x = torch.where(torch.rand(x.shape) < 0.15, 1e3 * (2 * torch.rand(x.shape) - 1), x)
            with torch.no_grad():
                batch = layer(x)
            outs = forward_at_threads_and_layouts(layer, x[1:2])
            truth = reference_conv(layer, x[1:2])
            for y in outs:
                assert torch.equal(y, batch[1:2])
                assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_cell_sorted_records_built_from_the_located_input(native, isa, monkeypatch):
    """The cell-sorted forward sorts each pair's records of a pixel block straight from the located input: 41
    pairs per group (an odd patch with its zero partner), stride (2, 1), dilation (1, 2), 2 groups of 65 outputs,
    1300 pixels (two pixel blocks of 650), 10% of the inputs far outside the grid; against float64, 1 and 2 threads
    and both layouts bitwise equal."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    with isa_path(native, isa):
        torch.manual_seed(13)
        layer = LMKANConv2d(18, 130, 3, stride=(2, 1), padding=1, dilation=(1, 2), groups=2, num_grids=5,
                            init_scale=2.0)
        with torch.no_grad():
            layer.bias.normal_()
        x = torch.randn(5, 18, 26, 22)
        x = torch.where(torch.rand(x.shape) < 0.1, 50 * (2 * torch.rand(x.shape) - 1), x)
        truth = reference_conv(layer, x)
        outs = forward_at_threads_and_layouts(layer, x)
        assert outs[0].shape == (5, 130, 13, 20)
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
        assert (outs[0].double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


def test_avx512_zmm_tile_gives_the_avx2_bits(native):
    """On the AVX-512 path the 64-output forward tile runs on 16-lane (zmm) vectors: lane by lane the same operations
    as the 8-lane tile of the AVX2 path, so the same bits, for the lookup (near and far inputs, float32 and bfloat16
    tables, 2 tiles and a narrow rest) and for the direct convolution's fused path."""
    gen = torch.Generator().manual_seed(5)
    x = 3 * torch.randn(70, 2 * 9, generator=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.2, 1e3 * torch.randn(x.shape, generator=gen), x)
    table = torch.randn(9, 9, 9, 133, generator=gen)
    layer = LMKANConv2d(16, 64, 3, padding=1, num_grids=8, init_scale=2.0)
    xc = F.pad(3 * torch.randn(2, 16, 11, 9, generator=gen), layer._pads())
    geometry = (list(layer.kernel_size), list(layer.stride), list(layer.dilation))
    wide, narrow = on_avx512_and_avx2(native, lambda: (native.forward(x, table), native.forward(x, table.bfloat16()),
                                                       native.conv2d_forward(xc, layer.table.detach(), *geometry)))
    assert all(torch.equal(a, b) for a, b in zip(wide, narrow))
    reference = forward_reference(x.double(), table.double())
    assert (wide[0].double() - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()


def test_cell_sorted_runs_give_the_same_bits_on_every_path(native, monkeypatch):
    """The cell-sorted forward's runs take 16-lane (zmm) vectors and 64-column sweeps on the AVX-512 path, and the
    direct convolution sorts 8 pairs at a time, each sweep then taking those pairs in order: every output still adds
    its pairs' terms in pair order, so AVX-512 and AVX2 (8 lanes, 16-column sweeps, the same operations) give the same
    bits, within float64's tolerance. 140 outputs (two 64-column sweeps, an 8-column one and a narrow rest), 27 pairs
    (three groups of 8 and a tail of 3), 5 pairs (one short group, an odd patch); 798 pixels (sort keys built 8 pixels
    per vector, a scalar tail of 6); float32 and float16 tables; 15% of the inputs far outside the grid; the lookup's
    cell-sorted forward (the same runs) on 300 samples. Two groups of 64 outputs (one sweep: in pixel order on the
    AVX-512 path, the same 4 chained FMAs per inside term as the runs: test_one_sweep_groups_run_in_pixel_order) on a
    bfloat16 table."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    torch.manual_seed(17)
    cases = ((6, 140, 1, None), (1, 140, 1, torch.float16), (12, 128, 2, torch.bfloat16))
    layers = [LMKANConv2d(c_in, c_out, 3, padding=1, groups=groups, num_grids=5, init_scale=2.0, table_dtype=dtype)
              for c_in, c_out, groups, dtype in cases]
    xs = [3 * torch.randn(2, layer.in_channels, 19, 21) for layer in layers]
    xs = [torch.where(torch.rand(x.shape) < 0.15, 1e3 * (2 * torch.rand(x.shape) - 1), x) for x in xs]
    samples = torch.where(torch.rand(300, 18) < 0.15, 1e3 * torch.randn(300, 18), 3 * torch.randn(300, 18))
    table = torch.randn(9, 6, 6, 140)
    with torch.no_grad():
        wide, narrow = on_avx512_and_avx2(
            native, lambda: [layer(x) for layer, x in zip(layers, xs)] + [native.forward(samples, table)])
    assert all(torch.equal(a, b) for a, b in zip(wide, narrow))
    truths = [reference_conv(layer, x) for layer, x in zip(layers, xs)]
    truths.append(forward_reference(samples.double(), table.double()))
    for y, truth in zip(wide, truths):
        assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_pair_ranges_read_chunks_of_any_byte_length(native, isa):
    """Batch 1 on an 8.7 MB float16 group table (59 pairs: an odd patch; 101 outputs: a tile and a narrow rest; G =
    26) runs the streamed path by pair ranges, which reads the rows its records use (202 bytes each: no whole
    number of 64-byte lines) before the forward: 25 pixels, a fifth of the inputs far outside the grid; the bits of
    the same table as float32, 1 and 2 threads and both layouts, and float64's tolerance."""
    with isa_path(native, isa):
        torch.manual_seed(23)
        layer = LMKANConv2d(13, 101, 3, padding=1, num_grids=26, init_scale=2.0, table_dtype=torch.float16).eval()
        assert layer.table.numel() * layer.table.element_size() > 8 * 2**20  # over the fused path's 8 MB
        wide = LMKANConv2d(13, 101, 3, padding=1, num_grids=26).eval()
        with torch.no_grad():
            wide.table.copy_(layer.table.float())
            wide.bias.copy_(layer.bias)
        x = 2 * torch.randn(1, 13, 5, 5)
        x = torch.where(torch.rand(x.shape) < 0.2, 1e3 * (2 * torch.rand(x.shape) - 1), x)
        outs = forward_at_threads_and_layouts(layer, x)
        with torch.no_grad():
            assert torch.equal(wide(x), outs[0])
        assert all(torch.equal(y, outs[0]) for y in outs[1:])
        truth = reference_conv(layer, x)
        assert (outs[0].double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_sort_keys_load_adjacent_pixels_as_vectors(native, isa, monkeypatch):
    """The cell-sorted forward's sort keys load 8 pixels' cells and coordinates with one vector load where their
    windows are adjacent (stride-1 rows of NCHW input) and element by element elsewhere (a row's end, stride 2,
    channels_last): the same bits either way. Rows of 21 pixels (vectors inside a row and across two), an odd patch
    (the zero partner), stride (1, 2), 1 and 3 images, 10% of the inputs far outside the grid: NCHW on 1 and 2
    threads and channels_last bitwise equal, and within float64's tolerance."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    with isa_path(native, isa):
        torch.manual_seed(23)
        for stride, images in (((1, 1), 3), ((1, 1), 1), ((1, 2), 3)):
            layer = LMKANConv2d(5, 66, 3, stride=stride, padding=1, num_grids=5, init_scale=2.0)
            x = torch.randn(images, 5, 19, 21)
            x = torch.where(torch.rand(x.shape) < 0.1, 1e3 * (2 * torch.rand(x.shape) - 1), x)
            truth = reference_conv(layer, x)
            outs = forward_at_threads_and_layouts(layer, x)
            assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2]), (stride, images)
            assert (outs[0].double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


def test_one_block_splits_its_pairs_into_two_ranges(native, monkeypatch):
    """Where the batch's pixels fit one block of the cell-sorted forward (14x14x256 at batch 1, 7x7x512 at batch 8)
    its tasks take two fixed ranges of pairs (all tiles each), the second range's partial outputs added after: the
    split depends on the shape only, so 1 and 2 threads and both layouts give the same bits, and AVX-512 and AVX2 (the
    same operations per range) too; every path within float64's tolerance. 196 pixels (one block at G = 8); 23
    pairs (an odd split: 11 + 12, tails of the groups of 8), 140 outputs (two tiles and a narrow rest), 2 groups of
    64 outputs (a partial per group; in pixel order on the AVX-512 path, the same bits), a float16 table, 15% of the
    inputs far outside the grid."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    torch.manual_seed(29)
    layers = [LMKANConv2d(5, 140, 3, padding=1, num_grids=8, init_scale=2.0).eval(),
              LMKANConv2d(10, 128, 3, padding=1, groups=2, num_grids=8, init_scale=2.0,
                          table_dtype=torch.float16).eval()]
    outs = {}
    for isa in ("avx512", "avx2", "generic"):
        with isa_path(native, isa):
            outs[isa] = []
            for layer in layers:
                x = 2 * torch.randn(1, layer.in_channels, 14, 14, generator=torch.Generator().manual_seed(3))
                x = torch.where(x.abs() > 2.9, 1e3 * x, x)
                runs = forward_at_threads_and_layouts(layer, x)
                assert all(torch.equal(y, runs[0]) for y in runs[1:]), (isa, layer)
                truth = reference_conv(layer, x)
                assert (runs[0].double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item(), isa
                outs[isa].append(runs[0])
    assert all(torch.equal(a, b) for a, b in zip(outs["avx512"], outs["avx2"]))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_pixel_blocks_in_equal_shares_per_thread(native, isa, monkeypatch):
    """The cell-sorted forward's pixel blocks come in a multiple of the thread count where there are more blocks than
    threads (fewer, larger blocks: 56x56x64 at batch 8 on 2 threads takes 12, not 13 split 7 / 6): 2500 pixels at G =
    5 are 3 blocks at 1 thread and 2 at 2 threads, and each output still adds its pairs in order from zero, so 1 and
    2 threads and both layouts give the same bits. 66 outputs (a tile and a narrow rest), 23 pairs (an odd patch), 10%
    of the inputs far outside the grid; against float64. The sort keys' weights, stored 4 adjacent per pixel, pass
    through vector groups and a scalar tail (1250 and 834 pixels per block)."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    with isa_path(native, isa):
        torch.manual_seed(31)
        layer = LMKANConv2d(5, 66, 3, padding=1, num_grids=5, init_scale=2.0)
        x = torch.randn(4, 5, 25, 25)
        x = torch.where(torch.rand(x.shape) < 0.1, 1e3 * (2 * torch.rand(x.shape) - 1), x)
        truth = reference_conv(layer, x)
        outs = forward_at_threads_and_layouts(layer, x)
        assert all(torch.equal(y, outs[0]) for y in outs[1:])
        assert (outs[0].double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()



def test_one_sweep_groups_run_in_pixel_order(native, monkeypatch):
    """Groups of one sweep of outputs (64 on the AVX-512 path: resnet18's layer1 class) take the cell-sorted
    forward's pairs in pixel order, unsorted, two pairs per pass (pixels_into_tile); the AVX2 path (16-column sweeps)
    sorts them into runs. Both add an inside term as 4 chained FMAs (near_chain_into; the runs summed a term's
    products in pairs before Round 20, which gave other bits than the pixel order's chain): the same terms in the
    same pair order and the same roundings, so the same bits (which shows that the runs take the chain), within
    float64's tolerance. 2 groups of 64 outputs, 27 pairs (each pair range ends on a pass of one pair); one image (one
    pixel block in two pair ranges: the next slices' prefetch stops at each range's end) and 3 images (two blocks);
    15% of the inputs far outside the grid (the difference form); float32, float16 and bfloat16 tables; 1 vs 2
    threads and both layouts bitwise equal on each path."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    torch.manual_seed(23)
    cases = ((1, None), (3, torch.float16), (3, None), (1, torch.bfloat16))
    layers = [LMKANConv2d(12, 128, 3, padding=1, groups=2, num_grids=5, init_scale=2.0, table_dtype=dtype)
              for _, dtype in cases]
    xs = [3 * torch.randn(images, 12, 20, 20) for images, _ in cases]
    xs = [torch.where(torch.rand(x.shape) < 0.15, 1e3 * (2 * torch.rand(x.shape) - 1), x) for x in xs]
    wide, narrow = on_avx512_and_avx2(
        native, lambda: [forward_at_threads_and_layouts(layer, x) for layer, x in zip(layers, xs)])
    _assert_both_paths_give_the_same_bits(wide, narrow, layers, xs)


def test_pixel_order_chunks_with_and_without_far_keys(native, monkeypatch):
    """The pixel order takes its pixels 16 at a time (forward_pixels_tile): a chunk whose keys are all inside adds
    its terms from corner offsets computed by vectors (inside_terms_row), a chunk with a far key (and the last pixels
    of a block) term by term (pixel_term). Inputs inside the grid or near it (|x| < 2.9 at G = 5: near extrapolation
    keeps the inside form) except a band of far values in one image row, so most chunks are all inside and the
    chunks over the band are not; 18x18 images (324 pixels: a block's last 4 pixels outside any chunk). Groups of 64
    outputs (pixel order on the AVX-512 path, sorted runs on AVX2) and of 16 (pixel order on both); float32 and
    float16 tables, one and three images; bitwise equal across paths, threads and layouts, within float64's
    tolerance."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    torch.manual_seed(29)
    cases = ((1, 128, None), (3, 128, torch.float16), (3, 32, None), (1, 32, torch.float16))
    layers = [LMKANConv2d(12, outputs, 3, padding=1, groups=2, num_grids=5, init_scale=2.0, table_dtype=dtype)
              for _, outputs, dtype in cases]
    xs = [(1.2 * torch.randn(images, 12, 18, 18)).clamp(-2.9, 2.9) for images, _, _ in cases]
    for x in xs:
        x[:, ::3, 7, 4:9] = 1e3 * (2 * torch.rand(x[:, ::3, 7, 4:9].shape) - 1)
    wide, narrow = on_avx512_and_avx2(
        native, lambda: [forward_at_threads_and_layouts(layer, x) for layer, x in zip(layers, xs)])
    _assert_both_paths_give_the_same_bits(wide, narrow, layers, xs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pixel_order_half_tables_widened_or_read_in_place_give_the_float32_bits(native, monkeypatch, dtype):
    """A half table in pixel order is widened once per call from 4 (G+1)^2 pixels (readable_table: 324 at G = 8) and
    read as it is below that (12x12: 144 pixels); both give the bits of the float32 table of the same values (the
    conversions are exact), 1 vs 2 threads and both layouts; within float64's tolerance."""
    monkeypatch.setenv("LMKAN_CPU_LARGE_TABLE_BYTES", "0")
    torch.manual_seed(31)
    for size in (12, 20):
        half = LMKANConv2d(12, 128, 3, padding=1, groups=2, num_grids=8, init_scale=2.0, table_dtype=dtype).eval()
        full = LMKANConv2d(12, 128, 3, padding=1, groups=2, num_grids=8).eval()
        full.load_state_dict({"table": half.table.detach().float(), "bias": half.bias.detach()}, strict=False)
        x = 2 * torch.randn(1, 12, size, size)
        x = torch.where(torch.rand(x.shape) < 0.1, 1e3 * (2 * torch.rand(x.shape) - 1), x)
        ys = forward_at_threads_and_layouts(half, x)
        expected = forward_at_threads_and_layouts(full, x)[0]
        assert all(torch.equal(y, expected) for y in ys), size
        truth = reference_conv(full, x)
        assert (expected.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()
