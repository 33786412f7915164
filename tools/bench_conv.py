"""Benchmark LMKANConv2d against nn.Conv2d of the same shape: forward (inference) and forward+backward.

All methods of a shape run round-robin in one process (warm-up rounds, then timed rounds, median wall time):
``nn.Conv2d``; the lmKAN layer's forward (the direct kernel, no patches); the same forward through the patch path
(unfold + ``lmkan::lookup2d``, the previous path, kept for tracing and export); and with ``--backward``
forward+backward of all three (x and the weights/table require grad, ``torch.autograd.grad`` against a fixed dy).
Layers are exact conversions (``LMKANConv2d.from_conv``, G=8 by default). Example (docs/benchmarks.md)::

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
from bench_layer import Method, run_round_robin  # noqa: E402

from lmkan_surgery.nn import LMKANConv2d  # noqa: E402

# (label, batch, in, out, kernel, stride, groups, size): resnet18's 3x3 layers, a 1x1 pointwise and a depthwise 3x3
SHAPES = [
    ("3x3 56x56x64", 1, 64, 64, 3, 1, 1, 56), ("3x3 56x56x64", 8, 64, 64, 3, 1, 1, 56),
    ("3x3 28x28x128", 1, 128, 128, 3, 1, 1, 28), ("3x3 28x28x128", 8, 128, 128, 3, 1, 1, 28),
    ("3x3 14x14x256", 1, 256, 256, 3, 1, 1, 14), ("3x3 14x14x256", 8, 256, 256, 3, 1, 1, 14),
    ("3x3 7x7x512", 1, 512, 512, 3, 1, 1, 7), ("3x3 7x7x512", 8, 512, 512, 3, 1, 1, 7),
    ("1x1 28x28 128->128", 8, 128, 128, 1, 1, 1, 28), ("depthwise 3x3 28x28x96", 1, 96, 96, 3, 1, 96, 28),
    ("depthwise 3x3 28x28x96", 8, 96, 96, 3, 1, 96, 28),
]
QUICK_SHAPES = [("3x3 14x14x32", 2, 32, 32, 3, 1, 1, 14), ("depthwise 3x3 14x14x16", 2, 16, 16, 3, 1, 16, 14)]


def build_methods(shape: tuple, grids: int, backward: bool) -> tuple[list[Method], float]:
    """The timed callables of one shape and the lmKAN table's MB."""
    _, batch, c_in, c_out, kernel, stride, groups, size = shape
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups)
    layer = LMKANConv2d.from_conv(conv, grids)
    x = torch.randn(batch, c_in, size, size, generator=gen)
    with torch.no_grad():
        dy = torch.randn_like(conv(x))
    x_req = x.clone().requires_grad_(True)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    def patch_path(inputs=x):
        padded = nn.functional.pad(inputs, layer._pads())
        return layer._forward_chunk(padded, dy.shape[2], dy.shape[3]) + layer.bias.view(1, -1, 1, 1)

    methods = [Method("conv fwd", no_grad(lambda: conv(x))), Method("lmkan direct fwd", no_grad(lambda: layer(x))),
               Method("lmkan patch fwd", no_grad(patch_path))]
    if backward:
        methods += [Method("conv fwd+bwd", lambda: torch.autograd.grad(conv(x_req), [x_req, conv.weight], dy)),
                    Method("lmkan fwd+bwd", lambda: torch.autograd.grad(layer(x_req), [x_req, layer.table], dy)),
                    Method("lmkan patch fwd+bwd",
                           lambda: torch.autograd.grad(patch_path(x_req), [x_req, layer.table], dy))]
    return methods, layer.table_bytes() / 2**20


def report(rows: list[tuple[tuple, float, dict[str, Method]]], backward: bool) -> str:
    """Markdown table: times and ratios to nn.Conv2d."""
    head = ("| layer | batch | table MB | conv fwd ms | direct fwd x conv | patch fwd x conv | direct / patch |"
            + (" conv fwd+bwd ms | direct fwd+bwd x conv | patch fwd+bwd x conv | direct / patch fwd+bwd |"
               if backward else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, mb, ms in rows:
        conv, direct, patch = (ms[k].median_ms() for k in ("conv fwd", "lmkan direct fwd", "lmkan patch fwd"))
        cells = [shape[0], str(shape[1]), f"{mb:.1f}", f"{conv:.2f}", f"{direct / conv:.1f}", f"{patch / conv:.1f}",
                 f"{direct / patch:.2f}"]
        if backward:
            cfb, lfb, pfb = (ms[k].median_ms() for k in ("conv fwd+bwd", "lmkan fwd+bwd", "lmkan patch fwd+bwd"))
            cells += [f"{cfb:.2f}", f"{lfb / cfb:.1f}", f"{pfb / cfb:.1f}", f"{lfb / pfb:.2f}"]
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
    parser.add_argument("--quick", action="store_true", help="smoke test: small shapes, 1 warm-up, 2 rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.only:
        shapes = [s for s in shapes if any(k in s[0] for k in args.only.split(","))]
    warmup, rounds = (1, 2) if args.quick else (args.warmup, args.rounds)
    rows = []
    for shape in shapes:
        methods, mb = build_methods(shape, args.grids, args.backward)
        run_round_robin(methods, torch.device("cpu"), warmup, rounds, slow_rounds=rounds)
        rows.append((shape, mb, {m.name: m for m in methods}))
        print(f"done {shape}", flush=True)
    print(f"threads={torch.get_num_threads()} G={args.grids} warmup={warmup} rounds={rounds} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
    print(report(rows, args.backward))


if __name__ == "__main__":
    main()
