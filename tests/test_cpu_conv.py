"""The direct CPU convolution kernel (LMKANConv2d in inference) against a float64 reference built from naive
patches and the float64 lookup reference, on randomised geometries; layouts, threads, batch 0/1, far inputs."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from lmkan_surgery.nn import LMKANConv2d
from lmkan_surgery.ops import dispatch

from conv_oracles import check_gradients, reference_conv, reference_grads
from isa import isa_path, on_avx512_and_avx2


def _random_layer(rng: random.Random) -> tuple[LMKANConv2d, tuple[int, ...]]:
    groups = rng.choice([1, 1, 2, 3, "depthwise"])
    per_group_in, per_group_out = rng.randint(1, 5), rng.randint(1, 4)
    if groups == "depthwise":
        groups, per_group_in, per_group_out = rng.randint(2, 7), 1, rng.choice([1, 2])
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    padding = rng.choice([0, 1, 2, "same", "valid", (1, 0)])
    stride = (1, 1) if padding == "same" else (rng.randint(1, 3), rng.randint(1, 3))
    layer = LMKANConv2d(groups * per_group_in, groups * per_group_out, kernel, stride, padding,
                        (rng.randint(1, 2), rng.randint(1, 2)), groups, bias=True,
                        padding_mode=rng.choice(["zeros", "reflect", "replicate", "circular"]),
                        num_grids=rng.choice([3, 5, 8]), init_scale=2.0)
    with torch.no_grad():
        layer.bias.normal_()
    size = (rng.randint(0, 3), groups * per_group_in, rng.randint(7, 12), rng.randint(7, 12))
    return layer, size


@pytest.mark.parametrize("seed", range(12))
def test_direct_conv_matches_float64_reference(native, seed):
    """Random stride/padding/dilation/groups (incl. depthwise), odd channel counts, batch 0-3, both layouts; 20% of
    the inputs far outside the grid (|x| up to 1e3)."""
    rng = random.Random(seed)
    layer, size = _random_layer(rng)
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(size, generator=gen)
    x = torch.where(torch.rand(size, generator=gen) < 0.2, 1e3 * (2 * torch.rand(size, generator=gen) - 1), x)
    truth = reference_conv(layer, x)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            y = layer(x.contiguous(memory_format=memory_format))
        assert y.shape == truth.shape
        if truth.numel():  # batch 0: the shape is the test
            scale = max(1.0, truth.abs().max().item())
            assert (y.double() - truth).abs().max().item() <= 2e-5 * scale, (layer, size)


def test_inference_and_eager_training_take_the_direct_kernel(native, monkeypatch):
    """Inference and eager training call the direct kernel; a traced forward (fvcore, the TorchScript exporter)
    keeps the patch path through lmkan::lookup2d."""
    calls = []
    backend = dispatch.backend_for(torch.zeros(1), torch.zeros(1))
    assert backend.conv2d_forward is not None and backend.conv2d_backward is not None
    kernel = backend.conv2d_forward
    monkeypatch.setitem(dispatch._native_cache, "cpu", dataclasses.replace(
        backend, conv2d_forward=lambda *a: calls.append(1) or kernel(*a)))
    layer = LMKANConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        direct = layer(x)
    trained = layer(x)
    assert calls == [1, 1] and trained.grad_fn is not None and torch.equal(direct, trained.detach())
    traced = torch.jit.trace(layer, x, check_trace=False)
    assert calls == [1, 1] and "lmkan::lookup2d" in str(traced.graph)
    assert torch.allclose(traced(x), direct, rtol=1e-5, atol=1e-5)


def test_direct_conv_one_and_two_threads_bitwise_equal(native):
    torch.manual_seed(3)
    layer = LMKANConv2d(16, 24, 3, padding=1, groups=2, init_scale=2.0)
    x = 2 * torch.randn(3, 16, 20, 20)
    threads = torch.get_num_threads()
    outs = []
    with torch.no_grad():
        for count in (1, 2):
            torch.set_num_threads(count)
            outs.append(layer(x))
    torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_direct_conv_with_half_table(native, dtype):
    torch.manual_seed(4)
    layer = LMKANConv2d(6, 9, 3, stride=2, padding=1, groups=3, table_dtype=dtype, init_scale=2.0)
    x = 2 * torch.randn(2, 6, 11, 9)
    with torch.no_grad():
        y = layer(x)
    truth = reference_conv(layer, x)
    assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("table_dtype", [None, "bfloat16"])
def test_direct_conv_large_group_table(native, table_dtype):
    """Group tables over 8 MB with more than 64 outputs take the streamed accumulation (records of every pixel)."""
    torch.manual_seed(5)
    layer = LMKANConv2d(32, 200, 3, stride=2, padding=1, groups=2, num_grids=26, init_scale=2.0,
                        table_dtype=table_dtype)
    assert layer.table[0].numel() * layer.table.element_size() > 8 * 2**20
    x = 2 * torch.randn(2, 32, 7, 6)
    with torch.no_grad():
        y = layer(x.contiguous(memory_format=torch.channels_last))
    truth = reference_conv(layer, x)
    assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("seed", range(6))
def test_direct_conv_gradients_match_float64_reference(native, seed):
    """Eager training takes the kernel's backward: both gradients vs float64 autograd through the naive reference."""
    rng = random.Random(100 + seed)
    layer, size = _random_layer(rng)
    size = (max(1, size[0]), *size[1:])
    gen = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(size, generator=gen)).contiguous(
        memory_format=torch.channels_last if seed % 2 else torch.contiguous_format).requires_grad_(True)
    y = layer(x)
    dy = torch.randn(y.shape, generator=gen)
    gx, gt = torch.autograd.grad(y, [x, layer.table], dy)
    rx, rt = reference_grads(layer, x, dy)
    assert (gx.double() - rx).abs().max().item() <= 2e-5 * max(1.0, rx.abs().max().item()), layer
    assert (gt.double() - rt).abs().max().item() <= 2e-5 * max(1.0, rt.abs().max().item()), layer


def test_direct_conv_backward_over_several_image_chunks_and_threads(native):
    """Images are processed in chunks of bounded record memory (here 3 images of 56x56 x 288 pairs, then 1): the
    per-image gradients equal those of single-image calls (one chunk each, checked against float64 above), the
    table gradient is their sum, and 1 and 2 threads give the same bits."""
    torch.manual_seed(6)
    layer = LMKANConv2d(64, 8, 3, padding=1, init_scale=2.0)
    x = torch.randn(4, 64, 56, 56, requires_grad=True)
    dy = torch.randn(4, 8, 56, 56)
    threads = torch.get_num_threads()
    grads = []
    for count in (1, 2):
        torch.set_num_threads(count)
        grads.append(torch.autograd.grad(layer(x), [x, layer.table], dy))
    torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    single = [torch.autograd.grad(layer(x[i:i + 1]), [x, layer.table], dy[i:i + 1]) for i in range(4)]
    assert torch.equal(grads[0][0], sum(g[0] for g in single))  # each image's rows come from its own call only
    table_sum = sum(g[1].double() for g in single)
    assert (grads[0][1].double() - table_sum).abs().max().item() <= 1e-5 * table_sum.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_pointwise_conv_takes_the_linear_kernel_and_matches_float64(native, isa, monkeypatch):
    """A 1x1 one-group convolution runs as the Linear lookup over pixels (the conv kernel is not called; nor is the
    one-call kernel, tests/test_cpu_one_call_maps.py): strides 1 and 2, both layouts, batch 0 and 1, 20% of the
    inputs far outside the grid, a bfloat16 table; gradients too."""
    backend = dispatch.backend_for(torch.zeros(1), torch.zeros(1))
    monkeypatch.setitem(dispatch._native_cache, "cpu", dataclasses.replace(  # the conv kernel would return None
        backend, conv2d_forward=None, conv2d_backward=None, pointwise_forward=None))  # -> patch path
    calls = []
    linear = backend.forward
    monkeypatch.setitem(dispatch._native_cache, "cpu", dataclasses.replace(
        dispatch._native_cache["cpu"], forward=lambda *a: calls.append(1) or linear(*a)))
    with isa_path(native, isa):
        torch.manual_seed(9)
        for stride, dtype, batch in ((1, None, 3), (2, torch.bfloat16, 1), ((2, 1), None, 0)):
            layer = LMKANConv2d(14, 11, 1, stride=stride, init_scale=2.0, table_dtype=dtype)
            with torch.no_grad():
                layer.bias.normal_()
            x = 3 * torch.randn(batch, 14, 9, 8)
            x = torch.where(torch.rand(x.shape) < 0.2, 1e3 * (2 * torch.rand(x.shape) - 1), x)
            truth = reference_conv(layer, x)
            for memory_format in (torch.contiguous_format, torch.channels_last):
                calls.clear()
                with torch.no_grad():
                    y = layer(x.contiguous(memory_format=memory_format))
                assert calls == [1] and y.shape == truth.shape
                if batch:
                    assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()
        layer = LMKANConv2d(14, 11, 1, stride=2, init_scale=2.0)
        x = (3 * torch.randn(2, 14, 9, 8)).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        y = layer(x)
        dy = torch.randn(y.shape)
        gx, gt = torch.autograd.grad(y, [x, layer.table], dy)
        rx, rt = reference_grads(layer, x, dy)
        assert (gx.double() - rx).abs().max().item() <= 2e-5 * rx.abs().max().item()
        assert (gt.double() - rt).abs().max().item() <= 2e-5 * rt.abs().max().item()


def test_pointwise_conv_one_and_two_threads_bitwise_equal(native):
    """Above the serial cut (8 x 28 x 28 pixels x 64 pairs x 96 outputs), forward and both gradients."""
    torch.manual_seed(10)
    layer = LMKANConv2d(128, 96, 1, init_scale=2.0)
    x = (2 * torch.randn(8, 128, 28, 28)).requires_grad_(True)
    dy = torch.randn(8, 96, 28, 28)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            y = layer(x)
            results.append((y.detach(), *torch.autograd.grad(y, [x, layer.table], dy)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_sorted_x_gradient_on_every_path(native, isa):
    """From 8 outputs per group the x gradient runs over the table gradient's cell-sorted records: 8, 13 (a masked
    tail) and 21 outputs per group, 1-2 groups, strides, dilation, both layouts, 15% of the inputs far outside the
    grid, float16 and bfloat16 tables (the table gradient is returned in the table's dtype); both gradients vs
    float64, 1 and 2 threads bitwise equal."""
    with isa_path(native, isa):
        for seed, (c_in, c_out, groups, stride, dilation, dtype) in enumerate((
                (5, 8, 1, 1, 1, None), (6, 26, 2, (2, 1), 1, torch.float16), (3, 21, 1, 1, 2, torch.bfloat16))):
            torch.manual_seed(20 + seed)
            layer = LMKANConv2d(c_in, c_out, 3, stride, padding=1, dilation=dilation, groups=groups,
                                num_grids=(5, 6, 8)[seed], init_scale=2.0, table_dtype=dtype)
            x = 2 * torch.randn(2, c_in, 15, 13)
            x = torch.where(torch.rand(x.shape) < 0.15, 12 * (2 * torch.rand(x.shape) - 1), x)
            x = x.contiguous(memory_format=torch.channels_last if seed % 2 else torch.contiguous_format)
            x.requires_grad_(True)
            dy = torch.randn(layer(x).shape)
            check_gradients(layer, x, dy)


def test_pointwise_inference_fuses_normalisation_and_bias_into_the_layouts(native):
    """A 1x1 layer with affine input normalisation (as from_conv builds) in inference: normalised, looked up and
    biased in one native call (tests/test_cpu_pointwise.py has its cases), written in nn.Conv2d's output layout
    (NCHW in -> contiguous, channels_last in -> channels_last): vs float64 on the normalised input and vs the
    training route's values."""
    torch.manual_seed(46)
    for stride in (1, 2, (2, 1)):
        conv = torch.nn.Conv2d(16, 12, 1, stride)
        mean, std = torch.randn(16), torch.rand(16) + 0.5
        layer = LMKANConv2d.from_conv(conv, 8, input_mean=mean, input_std=std)
        with torch.no_grad():
            layer.table.add_(0.1 * torch.randn(layer.table.shape))  # not exact any more: a real lookup
        x = mean.view(1, -1, 1, 1) + std.view(1, -1, 1, 1) * 2 * torch.randn(2, 16, 9, 7)
        normalised = x * layer.input_scale.view(1, -1, 1, 1) + layer.input_shift.view(1, -1, 1, 1)
        plain = LMKANConv2d(16, 12, 1, stride)
        with torch.no_grad():
            plain.table.copy_(layer.table), plain.bias.copy_(layer.bias)
        truth = reference_conv(plain, normalised)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            xm = x.contiguous(memory_format=memory_format)
            with torch.no_grad():
                y = layer(xm)
            assert y.is_contiguous(memory_format=memory_format) and y.shape == conv(xm).shape
            assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()
            trained = layer(xm.clone().requires_grad_(True))  # the unfused route (autograd through x)
            assert (y - trained.detach()).abs().max().item() <= 1e-5 * truth.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_fused_backward_over_pair_chunks_and_pixel_blocks(native, isa):
    """In training from 8 outputs per group both gradients run fused, per (pixel block, pair), over records sorted
    in L1: 2 groups of 65 outputs (a full tile and a 1-wide rest) and 68 pairs each (an odd patch; two pair-chunk
    tasks at G = 3), 1152 pixels (two equal blocks of 576), channels_last, 10% of the inputs far outside the grid;
    then one image (one block) with a float16 table, stride 2 and an odd channel count. Both gradients vs float64,
    1 and 2 threads bitwise equal."""
    with isa_path(native, isa):
        torch.manual_seed(31)
        layer = LMKANConv2d(30, 130, 3, padding=1, groups=2, num_grids=3, init_scale=2.0)
        x = torch.randn(2, 30, 24, 24)
        x = torch.where(torch.rand(x.shape) < 0.1, 40 * (2 * torch.rand(x.shape) - 1), x)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        check_gradients(layer, x, torch.randn(2, 130, 24, 24))
        layer = LMKANConv2d(7, 16, 3, stride=2, padding=1, num_grids=5, init_scale=2.0, table_dtype=torch.float16)
        x = (2 * torch.randn(1, 7, 17, 15)).requires_grad_(True)
        check_gradients(layer, x, torch.randn(1, 16, 9, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_backward_at_64_outputs_one_pass_gives_the_two_passes_bits(native, dtype):
    """At exactly 64 outputs per group the AVX-512 path runs both gradients in one pass over each run of a cell
    (conv_both_runs64: each output-gradient row loaded once); the AVX2 path keeps the table gradient's pass and then
    the x gradient's. 2 groups of 64 outputs, 5 channels each at G = 4 (25 cells: runs of every length mod 4, 15% of
    the inputs far outside the grid), 2 images of 14x13: both gradients vs float64, 1 and 2 threads bitwise equal on
    each path, and the two paths bitwise equal, for float32, float16 and bfloat16 tables."""
    torch.manual_seed(41)
    layer = LMKANConv2d(10, 128, 3, padding=1, groups=2, num_grids=4, init_scale=2.0, table_dtype=dtype)
    x = torch.randn(2, 10, 14, 13)
    x = torch.where(torch.rand(x.shape) < 0.15, 30 * (2 * torch.rand(x.shape) - 1), x)
    dy = torch.randn(2, 128, 14, 13)
    one, two = on_avx512_and_avx2(native, lambda: check_gradients(layer, x.clone().requires_grad_(True), dy))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_fused_backward_contiguous_rows_same_bits_as_strided(native):
    """The patch gradient of a stride-1 layer on NCHW input is added into grad_x a whole output row at a time
    (add_row, vectorised); channels_last input takes the strided loop. 2 images of 13x11 (rows of 11: a vector and
    a rest), 9 channels -> 16 outputs (fused) at G = 5: both gradients vs float64, 1 and 2 threads bitwise equal, and
    the two layouts' gradients bitwise equal (the same adds in the same order)."""
    torch.manual_seed(37)
    layer = LMKANConv2d(9, 16, 3, padding=1, num_grids=5, init_scale=2.0)
    x = 2 * torch.randn(2, 9, 13, 11)
    dy = torch.randn(2, 16, 13, 11)
    rows = check_gradients(layer, x.clone().requires_grad_(True), dy)
    strided = check_gradients(layer, x.contiguous(memory_format=torch.channels_last).requires_grad_(True), dy)
    assert torch.equal(rows[0], strided[0]) and torch.equal(rows[1], strided[1])
