"""The fused Linear forward's packed path (Round 16): from 12 (G+1)^2 samples on, with outputs in multiples of 32 and
G <= 8, the table is repacked once per call into tiles of 32 outputs (64 or 128 on AVX-512, 64 on the other paths,
where they divide the outputs, Round 19; a float32 table of one tile on a 64-byte line is read in place, Round 20) and each pair chunk is walked in L1-sized parts of 3 or more pairs, the
samples' sums carried from part to part (forward_carried). It adds the same terms in the same order as the unpacked
path, so it gives the bits of the same rows run in batches too small for the packed path; on
every ISA path, with far inputs in every part, float32 and half tables, 1 and 2 threads, the 1x1 convolution's
one-call layer too; and it is as accurate as the float32 reference against float64."""

from __future__ import annotations

import pytest
import torch

from conv_oracles import reference_conv
from isa import isa_path
from lmkan_surgery.nn import LMKANConv2d
from lmkan_surgery.ops.reference import forward_reference
from lookup_checks import assert_as_accurate, lookup_inputs
from test_cpu_half_reads import at_threads

# (batch, pairs, G, outputs): G = 8, 3 pair chunks of 25, 64 of 25 and 14, parts of 3 pairs (the last of each chunk
# 1 or 2), 3 tiles; G = 4, one chunk of 40 pairs in 4 parts of 10, 2 tiles; G = 4, chunks of 81 and 19 pairs, 1 tile;
# G = 3, batch just at 12 (G+1)^2 = 192; G = 8 with a 2.65 MB table, over kCarryTableBytes (fused_forward_block: 3
# blocks of 567 samples at 1 thread, 4 of 425 at 2). Tile widths on AVX-512 (carried_tile: the widest of 128, 64, 32
# dividing the outputs; AVX2 and generic: 64 or 32): 96 outputs 3 tiles of 32, 64 one of 64, 128 one of 128, 192
# three of 64, 384 three of 128; the last, a 4 MB table read 4.5 times per row, is packed only because its tiles are
# wide (kCarryWideFarRowUses).
PACKED = ((1000, 64, 8, 96), (400, 40, 4, 64), (700, 100, 4, 32), (192, 9, 3, 64), (1700, 64, 8, 128),
          (1000, 24, 8, 192), (400, 20, 4, 384), (700, 32, 8, 384))


def unpacked_rows(native, x: torch.Tensor, table: torch.Tensor, rows: int) -> torch.Tensor:
    """The forward of x in batches of `rows` samples (below the packed path's batch), concatenated."""
    return torch.cat([native.forward(x[i:i + rows], table) for i in range(0, x.shape[0], rows)])


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_packed_path_gives_the_unpacked_paths_bits(native, isa):
    """Bitwise the rows run in batches of 12 (G+1)^2 - 1 or fewer (the unpacked fused path), 1 and 2 threads; as
    accurate as the float32 reference (float64 the truth)."""
    with isa_path(native, isa):
        for seed, (batch, pairs, grids, n_out) in enumerate(PACKED):
            x, table, _ = lookup_inputs((batch, pairs, grids, n_out), seed)
            outs = [at_threads(n, lambda: native.forward(x, table)) for n in (1, 2)]
            assert torch.equal(outs[0], outs[1]), (batch, pairs, grids, n_out)
            assert torch.equal(outs[0], unpacked_rows(native, x, table, 12 * (grids + 1) ** 2 - 1))
            assert torch.equal(outs[0], unpacked_rows(native, x, table, 97))
            assert_as_accurate(outs[0], forward_reference(x, table), forward_reference(x.double(), table.double()))


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_packed_path_half_tables_give_the_float32_tables_bits(native, dtype):
    """A half table (widened, then packed) gives the float32 table of its values' bits, 1 and 2 threads."""
    for seed, (batch, pairs, grids, n_out) in enumerate(PACKED[:2] + PACKED[4:]):
        x, table, _ = lookup_inputs((batch, pairs, grids, n_out), seed)
        half = table.to(dtype)
        outs = [at_threads(n, lambda: native.forward(x, half)) for n in (1, 2)]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], native.forward(x, half.float()))


@pytest.mark.parametrize("n_out, height, width", ((64, 34, 30), (128, 40, 42)))
def test_packed_path_in_the_pointwise_layer(native, n_out, height, width):
    """A 1x1 convolution of 128 -> 64 channels at G = 8 over 34 x 30 pixels (1020 >= 972: packed) gives, bitwise, the
    output of its 6 x 5 crop (30 pixels: unpacked) there; NCHW and channels_last; float64 within 2e-5. So does one of
    128 -> 128 channels over 40 x 42 pixels (a 2.65 MB table, over kCarryTableBytes: blocks of up to 819 pixels)."""
    torch.manual_seed(3)
    layer = LMKANConv2d(128, n_out, 1, num_grids=8, init_scale=2.0)
    x, _, _ = lookup_inputs((height * width, 64, 8, 1), 5)
    x = x.T.reshape(1, 128, height, width).contiguous()
    with torch.no_grad():
        for fmt in (torch.contiguous_format, torch.channels_last):
            y = layer(x.contiguous(memory_format=fmt))
            crop = layer(x[:, :, 10:16, 20:25].contiguous(memory_format=fmt))
            assert torch.equal(y[:, :, 10:16, 20:25], crop), fmt
    truth = reference_conv(layer, x)
    assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_packed_path_reads_a_one_tile_table_in_place(native, isa):
    """A float32 table whose outputs make one packed tile (32, 64 or 128 outputs; packed_tiles) is read in place when
    it starts on a 64-byte line (as torch allocates it) and copied when it does not (a view 4 bytes into its storage):
    both give the unpacked path's bits (as accurate as the float32 reference); changed in place between two calls, the
    new values are used."""
    with isa_path(native, isa):
        for seed, (batch, pairs, grids, n_out) in enumerate(PACKED[1:5]):
            x, table, _ = lookup_inputs((batch, pairs, grids, n_out), seed)
            off_line = torch.empty(table.numel() + 1)[1:].view_as(table).copy_(table)
            assert table.data_ptr() % 64 == 0 and off_line.data_ptr() % 64 == 4
            expected = unpacked_rows(native, x, table, 97)
            assert torch.equal(native.forward(x, table), expected), (batch, pairs, grids, n_out)
            assert_as_accurate(expected, forward_reference(x, table), forward_reference(x.double(), table.double()))
            assert torch.equal(native.forward(x, off_line), expected), (batch, pairs, grids, n_out)
            table.mul_(-0.5)
            assert torch.equal(native.forward(x, table), unpacked_rows(native, x, table, 97))
