"""Benchmark LMKANConv2d against nn.Conv2d of the same shape: forward (inference) and forward+backward.

All methods of a shape run round-robin in one process (warm-up rounds, then timed rounds, median wall time):
``nn.Conv2d``; the lmKAN layer's forward (the direct kernel, no patches); the same forward through the patch path
(unfold + ``lmkan::lookup2d``, the previous path, kept for tracing and export); and with ``--backward``
forward+backward of all three (x and the weights/table require grad, ``torch.autograd.grad`` against a fixed dy).
On 1x1 one-group layers two more rows time the two routes of the kernel call alone (normalised input, bias
added): the general direct-convolution kernel and the Linear lookup over pixels that the layer now takes.
``--kernel`` (with ``--baseline``) times only the bare native forward and backward of both builds (no layer,
normalisation or dispatch around them): the before/after of a kernel change with the least noise.
``--channels-last`` gives every method channels_last input (and nn.Conv2d channels_last weights); ``--baseline PATH``
times the layer again with another build's extension file (before/after a kernel change, same rounds);
``--half-tables`` times the layer with float16 and bfloat16 tables of the same values beside the float32 one.
Layers are exact conversions (``LMKANConv2d.from_conv``, G=8 by default) given their N(0, 1) inputs' statistics, so
the inputs spread over the grid's cells as a calibrated student's do (a data-free conversion would put every input in
the edge cells). Example (docs/benchmarks.md)::

    OMP_WAIT_POLICY=PASSIVE python tools/bench_conv.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import HALF_TABLES, Method, add_baseline, load_baseline, report_baseline, run_round_robin  # noqa: E402
from bench_ratios import half_table_cells, half_table_head  # noqa: E402

from lmkan_surgery.nn import LMKANConv2d  # noqa: E402
from lmkan_surgery.ops import dispatch  # noqa: E402
from lmkan_surgery.ops.conv import conv_kernel2d, pointwise_conv2d  # noqa: E402

# (label, batch, in, out, kernel, stride, groups, size): resnet18's 3x3 layers, a 1x1 pointwise and a depthwise 3x3
SHAPES = [
    ("3x3 56x56x64", 1, 64, 64, 3, 1, 1, 56), ("3x3 56x56x64", 8, 64, 64, 3, 1, 1, 56),
    ("3x3 28x28x128", 1, 128, 128, 3, 1, 1, 28), ("3x3 28x28x128", 8, 128, 128, 3, 1, 1, 28),
    ("3x3 14x14x256", 1, 256, 256, 3, 1, 1, 14), ("3x3 14x14x256", 8, 256, 256, 3, 1, 1, 14),
    ("3x3 7x7x512", 1, 512, 512, 3, 1, 1, 7), ("3x3 7x7x512", 8, 512, 512, 3, 1, 1, 7),
    ("1x1 28x28 128->128", 8, 128, 128, 1, 1, 1, 28), ("depthwise 3x3 28x28x96", 1, 96, 96, 3, 1, 96, 28),
    ("depthwise 3x3 28x28x96", 8, 96, 96, 3, 1, 96, 28),
]
# 1x1 layers: resnet18's stride-2 downsample shortcuts and mobilenet_v2's expand/project pointwise layers
POINTWISE_SHAPES = [
    ("1x1/2 56x56 64->128 (resnet18)", 1, 64, 128, 1, 2, 1, 56), ("1x1/2 56x56 64->128 (resnet18)", 8, 64, 128, 1, 2, 1, 56),
    ("1x1/2 28x28 128->256 (resnet18)", 8, 128, 256, 1, 2, 1, 28),
    ("1x1/2 14x14 256->512 (resnet18)", 8, 256, 512, 1, 2, 1, 14),
    ("1x1 56x56 24->144 (mobilenet_v2)", 8, 24, 144, 1, 1, 1, 56),
    ("1x1 28x28 192->32 (mobilenet_v2)", 8, 192, 32, 1, 1, 1, 28),
    ("1x1 14x14 64->384 (mobilenet_v2)", 8, 64, 384, 1, 1, 1, 14),
    ("1x1 7x7 960->160 (mobilenet_v2)", 8, 960, 160, 1, 1, 1, 7),
]
QUICK_SHAPES = [("3x3 14x14x32", 2, 32, 32, 3, 1, 1, 14), ("depthwise 3x3 14x14x16", 2, 16, 16, 3, 1, 16, 14),
                ("1x1/2 14x14 32->48", 2, 32, 48, 1, 2, 1, 14)]


def with_batches(shapes: list[tuple], batches: list[int]) -> list[tuple]:
    """Each distinct layer of `shapes` once per batch size in `batches` (its own batch sizes dropped)."""
    layers = list(dict.fromkeys((s[0],) + s[2:] for s in shapes))
    return [(layer[0], batch) + layer[1:] for layer in layers for batch in batches]


def build_methods(shape: tuple, grids: int, backward: bool, channels_last: bool,
                  half_tables: bool = False) -> tuple[list[Method], float]:
    """The timed callables of one shape and the lmKAN table's MB."""
    _, batch, c_in, c_out, kernel, stride, groups, size = shape
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups)

    def convert(table_dtype=None):
        return LMKANConv2d.from_conv(conv, grids, input_mean=torch.zeros(c_in), input_std=torch.ones(c_in),
                                     table_dtype=table_dtype)

    layer = convert()
    halves = {h: convert(h) for h in HALF_TABLES["cpu"]} if half_tables else {}
    x = torch.randn(batch, c_in, size, size, generator=gen)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        dy = torch.randn_like(conv(x))
    x_req = x.clone(memory_format=torch.preserve_format).requires_grad_(True)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    def patch_path(inputs=x):
        padded = nn.functional.pad(inputs, layer._pads())
        return layer._forward_chunk(padded, dy.shape[2], dy.shape[3]) + layer.bias.view(1, -1, 1, 1)

    def route(use_linear: bool, inputs=x):
        normalised = layer._normalize(inputs, 1)
        y = (pointwise_conv2d(normalised, layer.table, layer.stride) if use_linear else
             conv_kernel2d(normalised, layer.table, layer.kernel_size, layer.stride, layer.dilation))
        return y + layer.bias.view(1, -1, 1, 1)

    methods = [Method("conv fwd", no_grad(lambda: conv(x))), Method("lmkan direct fwd", no_grad(lambda: layer(x)))]
    # half-table layers of the same values, timed right after the float32 one so each round's ratio compares calls
    # moments apart
    methods += [Method(f"lmkan {h} fwd", no_grad(lambda half=half: half(x))) for h, half in halves.items()]
    methods.append(Method("lmkan patch fwd", no_grad(patch_path)))
    def unfused_layer():
        """The layer's 1x1 inference steps before Round 9: normalise NCHW, transposing copy to pixel rows (in
        pointwise_conv2d), the Linear lookup, NCHW copy of its output, bias add, back to channels_last if so."""
        y = route(True).contiguous() if channels_last else pointwise_conv2d(
            layer._normalize(x, 1), layer.table, layer.stride).contiguous() + layer.bias.view(1, -1, 1, 1)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y

    pointwise = kernel == 1 and groups == 1
    if pointwise:
        methods += [Method("kernel route fwd", no_grad(lambda: route(False))),
                    Method("linear route fwd", no_grad(lambda: route(True))),
                    Method("unfused layer fwd", no_grad(unfused_layer))]
    if backward:
        methods += [Method("conv fwd+bwd", lambda: torch.autograd.grad(conv(x_req), [x_req, conv.weight], dy)),
                    Method("lmkan fwd+bwd", lambda: torch.autograd.grad(layer(x_req), [x_req, layer.table], dy)),
                    Method("lmkan patch fwd+bwd",
                           lambda: torch.autograd.grad(patch_path(x_req), [x_req, layer.table], dy))]
        if pointwise:
            methods += [Method(f"{name} route fwd+bwd", lambda linear=linear: torch.autograd.grad(
                route(linear, x_req), [x_req, layer.table], dy)) for name, linear in (("kernel", False), ("linear", True))]
    return methods, layer.table_bytes() / 2**20


def kernel_methods(shape: tuple, grids: int, baseline: dispatch.Backend,
                   channels_last: bool = False, backward: bool = True) -> tuple[list[Method], float]:
    """The bare native calls of one shape (padded input, no layer around them: no normalisation, bias or
    dispatch): forward and (unless backward is False) backward, both gradients, of this build and of the baseline
    build; and the table's MB."""
    _, batch, c_in, c_out, kernel, stride, groups, size = shape
    gen = torch.Generator().manual_seed(0)
    layer = LMKANConv2d.from_conv(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups), grids)
    x = nn.functional.pad(torch.randn(batch, c_in, size, size, generator=gen), layer._pads())
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    table = layer.table.detach()
    geometry = (list(layer.kernel_size), list(layer.stride), list(layer.dilation))
    current = dispatch.backend_for(x, table)
    dy = torch.randn(current.conv2d_forward(x, table, *geometry).shape, generator=gen)
    methods = []
    for tag, backend in (("", current), ("baseline ", baseline)):
        methods.append(Method(f"{tag}kernel fwd", lambda b=backend: b.conv2d_forward(x, table, *geometry)))
        if backward:
            methods.append(Method(f"{tag}kernel bwd",
                                  lambda b=backend: b.conv2d_backward(dy, x, table, *geometry, True, True)))
    return methods, layer.table_bytes() / 2**20


def report_kernels(rows: list[tuple[tuple, float, dict[str, Method]]]) -> str:
    """Markdown table of the bare kernels, baseline build (before) and this build (after), same rounds."""
    head = ("| layer | batch | table MB | fwd before ms | fwd after ms | after / before | bwd before ms | bwd after ms |"
            " after / before |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, mb, ms in rows:
        cells = [shape[0], str(shape[1]), f"{mb:.1f}"]
        for step in ("fwd", "bwd"):
            if f"kernel {step}" not in ms:
                cells += ["-", "-", "-"]
                continue
            old, new = ms[f"baseline kernel {step}"].median_ms(), ms[f"kernel {step}"].median_ms()
            cells += [f"{old:.2f}", f"{new:.2f}", f"{new / old:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(ms: dict[str, Method], top: str, bottom: str) -> str:
    """time(top) / time(bottom) to 2 decimals, '-' where the shape has no such method."""
    if top not in ms or bottom not in ms:
        return "-"
    return f"{ms[top].median_ms() / ms[bottom].median_ms():.2f}"


def report(rows: list[tuple[tuple, float, dict[str, Method]]], backward: bool) -> str:
    """Markdown table: times and ratios to nn.Conv2d; on 1x1 layers the two kernel routes side by side."""
    head = ("| layer | batch | table MB | conv fwd ms | direct fwd x conv | patch fwd x conv | direct / patch |"
            " kernel route fwd x conv | linear route fwd x conv | linear / kernel route |"
            + (" conv fwd+bwd ms | direct fwd+bwd x conv | patch fwd+bwd x conv | direct / patch fwd+bwd |"
               " linear / kernel route fwd+bwd |" if backward else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, mb, ms in rows:
        conv = ms["conv fwd"].median_ms()
        cells = [shape[0], str(shape[1]), f"{mb:.1f}", f"{conv:.2f}", _ratio(ms, "lmkan direct fwd", "conv fwd"),
                 _ratio(ms, "lmkan patch fwd", "conv fwd"), _ratio(ms, "lmkan direct fwd", "lmkan patch fwd"),
                 _ratio(ms, "kernel route fwd", "conv fwd"), _ratio(ms, "linear route fwd", "conv fwd"),
                 _ratio(ms, "linear route fwd", "kernel route fwd")]
        if backward:
            cells += [f"{ms['conv fwd+bwd'].median_ms():.2f}", _ratio(ms, "lmkan fwd+bwd", "conv fwd+bwd"),
                      _ratio(ms, "lmkan patch fwd+bwd", "conv fwd+bwd"),
                      _ratio(ms, "lmkan fwd+bwd", "lmkan patch fwd+bwd"),
                      _ratio(ms, "linear route fwd+bwd", "kernel route fwd+bwd")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inconsistent_conv_rows(rows: list[tuple[tuple, float, dict[str, Method]]]) -> list[str]:
    """Rows whose nn.Conv2d forward median exceeds its forward+backward median: impossible but for a transient of
    the run (a 960->160 row once read 3.4 and 5.8 ms forward against 2.9 ms forward+backward, 1.0 ms on rerun), so
    every ratio to the conv on such a row is suspect."""
    return [f"{shape[0]} batch {shape[1]}" for shape, _, ms in rows
            if "conv fwd+bwd" in ms and ms["conv fwd"].median_ms() > ms["conv fwd+bwd"].median_ms()]


def report_half(rows: list[tuple[tuple, float, dict[str, Method]]]) -> str:
    """The half-precision-table forwards against nn.Conv2d and the float32-table forward of the same run."""
    halves = HALF_TABLES["cpu"]
    head = f"| layer | batch | float32 table MB | {half_table_head(halves, 'conv')} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, mb, ms in rows:
        cells = [shape[0], str(shape[1]), f"{mb:.1f}"]
        for h in halves:
            cells += half_table_cells(ms[f"lmkan {h} fwd"], ms["lmkan direct fwd"], ms["conv fwd"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_fusion(rows: list[tuple[tuple, float, dict[str, Method]]]) -> str:
    """Markdown table of the 1x1 layers: the layer forward (fused normalisation and output layout) against the
    unfused steps of before, and both against nn.Conv2d, same rounds."""
    head = "| layer | batch | conv fwd ms | layer fwd x conv | unfused steps x conv | layer / unfused |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, _, ms in rows:
        if "unfused layer fwd" in ms:
            cells = [shape[0], str(shape[1]), f"{ms['conv fwd'].median_ms():.2f}",
                     _ratio(ms, "lmkan direct fwd", "conv fwd"), _ratio(ms, "unfused layer fwd", "conv fwd"),
                     _ratio(ms, "lmkan direct fwd", "unfused layer fwd")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grids", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backward", action="store_true", help="also time forward+backward (direct and patch)")
    parser.add_argument("--only", help="comma-separated substrings of layer labels to run")
    parser.add_argument("--batch", help="comma-separated batch sizes replacing each layer's own (e.g. 32: the "
                                        "converted resnet18's timed batch)")
    parser.add_argument("--pointwise", action="store_true", help="the 1x1 layers of resnet18 and mobilenet_v2 instead")
    parser.add_argument("--channels-last", action="store_true", help="channels_last inputs (and nn.Conv2d weights)")
    parser.add_argument("--baseline", help="another build's extension .so to time beside this one")
    parser.add_argument("--quick", action="store_true", help="smoke test: small shapes, 1 warm-up, 2 rounds")
    parser.add_argument("--kernel", action="store_true",
                        help="time only the bare native forward and backward, before (--baseline) and after")
    parser.add_argument("--forward-only", action="store_true", help="with --kernel: the forward alone")
    parser.add_argument("--half-tables", action="store_true",
                        help="also time the layer with float16 and bfloat16 tables of the same values")
    args = parser.parse_args(argv)
    if args.kernel and not args.baseline:
        parser.error("--kernel compares two builds: give --baseline PATH")
    if args.kernel and args.half_tables:
        parser.error("--half-tables times the layer: drop --kernel")
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else POINTWISE_SHAPES if args.pointwise else SHAPES
    if args.only:
        shapes = [s for s in shapes if any(k in s[0] for k in args.only.split(","))]
    if args.batch:
        shapes = with_batches(shapes, [int(b) for b in args.batch.split(",")])
    warmup, rounds = (1, 2) if args.quick else (args.warmup, args.rounds)
    baseline = load_baseline(args.baseline) if args.baseline else None
    rows = []
    for shape in shapes:
        if args.kernel:
            methods, mb = kernel_methods(shape, args.grids, baseline, args.channels_last, not args.forward_only)
        else:
            methods, mb = build_methods(shape, args.grids, args.backward, args.channels_last, args.half_tables)
            methods = add_baseline(methods, baseline, ("lmkan direct fwd", "lmkan fwd+bwd"))
        run_round_robin(methods, torch.device("cpu"), warmup, rounds, slow_rounds=rounds)
        rows.append((shape, mb, {m.name: m for m in methods}))
        print(f"done {shape}", flush=True)
    print(f"threads={torch.get_num_threads()} G={args.grids} warmup={warmup} rounds={rounds} "
          f"channels_last={args.channels_last} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
    if args.kernel:
        print(f"before: {args.baseline}")
        print(report_kernels(rows))
        return
    print(report(rows, args.backward))
    for row in inconsistent_conv_rows(rows):
        print(f"warning: {row}: nn.Conv2d's forward timed slower than its forward+backward (a transient of this run); "
              "its ratios are suspect: rerun that row")
    if any("unfused layer fwd" in ms for _, _, ms in rows):
        print(report_fusion(rows))
    if args.half_tables:
        print(report_half(rows))
    if baseline is not None:
        print(f"before: {args.baseline}")
        named = [((s[0], s[1]), mb, ms) for s, mb, ms in rows]
        print(report_baseline(named, "lmkan direct fwd", "lmkan fwd+bwd" if args.backward else None, "conv fwd",
                              "conv fwd+bwd"))


if __name__ == "__main__":
    main()
