"""Benchmark the lmKAN op against nn.Linear: median time of linear, the PyTorch reference and the native kernel.

All methods of a shape run round-robin in one process (warm-up rounds, then timed rounds, median), forward alone
and forward+backward (x and the weights/table require grad, ``torch.autograd.grad`` against a fixed dy). Slow
reference calls are capped to fewer rounds. Example (the CPU numbers in docs/benchmarks.md)::

    OMP_WAIT_POLICY=PASSIVE python tools/bench_layer.py --threads 2

``--per-call`` instead times the per-call cost at batch 1 (a 288->32 layer, as a converted resnet18 head would
be): loops of calls per method, round-robin, median microseconds per call, the bare kernel beside the layer.
``--baseline PATH`` also times the native calls with another build's extension file (say the previous commit's,
copied out of the kernel cache), so a kernel change is measured before/after in the same rounds.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from lmkan_surgery.kernels import build
from lmkan_surgery.ops import dispatch, lmkan_lookup
from lmkan_surgery.ops.dispatch import BACKEND_ENV

from bench_ratios import fmt_ms, half_table_cells, half_table_head  # tools/: beside this file

CPU_SHAPES = [(4096, 128, 128, 8), (4096, 128, 128, 26), (4096, 512, 512, 16), (65536, 32, 32, 16), (1024, 1024, 1024, 8)]
QUICK_SHAPES = [(512, 64, 64, 8), (2048, 32, 32, 16)]
# --small: few outputs (the planner's folded 128 -> 1 block, student last layers) and the issue-16 students' training
# shapes at batch 256; the few-output ones also time the teacher tail they replace (Linear n x n + SiLU + Linear n x 1).
SMALL_SHAPES = [(256, 128, 1, 4), (256, 64, 1, 8), (256, 88, 1, 8), (256, 128, 4, 4), (256, 10, 61, 8),
                (256, 62, 61, 8), (256, 62, 1, 8)]
# GPU: the CPU shapes plus the README case of the official kernels (B=2^20, 512x512) at G=20 and G=8.
GPU_SHAPES = [(2**20, 512, 512, 20), (2**20, 512, 512, 8)]
SHAPES = {"cpu": CPU_SHAPES, "cuda": CPU_SHAPES + GPU_SHAPES}
HALF_TABLES = {"cpu": ("float16", "bfloat16"), "cuda": ("bfloat16",)}  # table storage dtypes timed beside float32
REFERENCE_MAX_EVALS = 2**33  # the PyTorch reference is skipped above B * N_in/2 * N_out evaluations (minutes a call)
SLOW_CALL_S = 1.0  # a method whose warm-up call takes longer gets only `slow_rounds` timed rounds


@dataclass
class Method:
    """One timed callable and its measurements."""

    name: str
    fn: Callable[[], object]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rounds: int = 0

    def median_ms(self) -> float:
        """Median wall-clock time in ms (nan when never timed)."""
        return 1e3 * statistics.median(self.wall) if self.wall else float("nan")

    def median_cpu_ms(self) -> float:
        """Median process CPU time in ms (summed over threads)."""
        return 1e3 * statistics.median(self.cpu) if self.cpu else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lookup_with(backend: str, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    os.environ[BACKEND_ENV] = backend
    try:
        return lmkan_lookup(x, table)
    finally:
        os.environ.pop(BACKEND_ENV, None)


def build_methods(
    shape: tuple[int, int, int, int], device: torch.device, native: str, with_reference: bool = True,
    baseline: dispatch.Backend | None = None,
) -> tuple[list[Method], float]:
    """Forward and forward+backward callables of linear / reference / native for one shape, and the table MB; on
    CPU also the bare extension calls ('kernel', and 'baseline kernel' for a --baseline build), without the op's
    Python dispatch."""
    batch, n_in, n_out, grids = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n_in, generator=gen).to(device)
    dy = torch.randn(batch, n_out, generator=gen).to(device)
    table = (0.1 * torch.randn(n_in // 2, grids + 1, grids + 1, n_out, generator=gen)).to(device)
    linear = torch.nn.Linear(n_in, n_out).to(device)
    x_req = x.clone().requires_grad_(True)
    table_req = table.clone().requires_grad_(True)

    def linear_fb():
        return torch.autograd.grad(linear(x_req), [x_req, linear.weight], dy)

    def lookup_fwd(backend, with_table=table):
        def run():
            with torch.no_grad():
                return _lookup_with(backend, x, with_table)
        return run

    def lookup_fb(backend):
        return lambda: torch.autograd.grad(_lookup_with(backend, x_req, table_req), [x_req, table_req], dy)

    def linear_fwd():
        with torch.no_grad():
            return linear(x)

    methods = [Method("linear fwd", linear_fwd), Method("linear fwd+bwd", linear_fb)]
    if with_reference:
        methods += [Method("reference fwd", lookup_fwd("reference")),
                    Method("reference fwd+bwd", lookup_fb("reference"))]
    methods.append(Method(f"{native} fwd", lookup_fwd(native)))
    for half in HALF_TABLES[device.type]:  # the inference path with a half-precision table (fp32 arithmetic), timed
        # right after the float32 table's forward, so that each round's ratio compares calls moments apart
        methods.append(Method(f"{native} {half} fwd", lookup_fwd(native, table.to(getattr(torch, half)))))
    methods.append(Method(f"{native} fwd+bwd", lookup_fb(native)))
    if device.type == "cpu":  # the streamed forward where the cell-sorted one would run (the previous large-table path)
        methods.append(Method(f"{native} streamed fwd", with_env(SORTED_OFF, lookup_fwd(native))))
    if device.type == "cpu":
        bare = [("kernel", dispatch._native_backend("cpu"))] + ([("baseline kernel", baseline)] if baseline else [])
        for name, be in bare:
            methods += [Method(f"{name} fwd", lambda be=be: be.forward(x, table)),
                        Method(f"{name} fwd+bwd", lambda be=be: (be.forward(x, table),
                                                                 be.backward(dy, x, table, True, True)))]
    if n_out < 8:  # what a few-output lmKAN block replaces: Linear n_in x n_in + SiLU + Linear n_in x n_out
        tail = torch.nn.Sequential(torch.nn.Linear(n_in, n_in), torch.nn.SiLU(), torch.nn.Linear(n_in, n_out))
        tail = tail.to(device)
        methods.append(Method("teacher tail fwd", lambda: _no_grad(tail, x)))
    return methods, table.numel() * 4 / 2**20


def _no_grad(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def load_baseline(path: str) -> dispatch.Backend:
    """The CPU backend of another build's extension file (its module name is the file name's stem).

    Refuses a file whose module name is the build under test's (same sources, same hash): a second extension of
    that name in the process runs the first one's code, so the A/B would time one build twice."""
    name = os.path.basename(path).split(".")[0]
    if name == build.load_native("cpu").__name__:
        raise SystemExit(f"--baseline {path}: its module name {name} is the build under test's (built from the same "
                         "sources); the process would run one build's code for both. Pass a build of other sources.")
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return dispatch.Backend("baseline", module.forward, dispatch._undefined_as_none(module.backward),
                            getattr(module, "conv2d_forward", None), getattr(module, "conv2d_backward", None))


def with_backend(backend: dispatch.Backend, fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with `backend` as the native CPU backend (and the built one restored after)."""
    def run():
        saved = dispatch._native_backend("cpu")
        dispatch._native_cache["cpu"] = backend
        try:
            return fn()
        finally:
            dispatch._native_cache["cpu"] = saved
    return run


def add_baseline(methods: list[Method], backend: dispatch.Backend | None, names: tuple[str, ...]) -> list[Method]:
    """methods plus 'baseline <name>' copies of the named ones run with `backend` (none without a baseline)."""
    if backend is None:
        return methods
    return methods + [Method(f"baseline {m.name}", with_backend(backend, m.fn)) for m in methods if m.name in names]


def report_baseline(rows: list, base: str, fb_base: str | None, top: str = "linear fwd",
                    fb_top: str = "linear fwd+bwd", cpu_time: bool = False) -> str:
    """Each row's `base` method with the baseline build and with this one, against `top` (and the same for
    forward+backward when `fb_base` is given): the before/after of a kernel change, measured in the same rounds.
    cpu_time: medians of the process CPU time (less sensitive than wall clock to other jobs on a shared box)."""
    passes = [(top, base)] + ([(fb_top, fb_base)] if fb_base else [])
    head = "| shape | " + " | ".join(f"{t} ms | before: {b} x | after x | after / before" for t, b in passes) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, _, ms in rows:
        cells = [str(shape)]
        for t, b in passes:
            median = (lambda m: m.median_cpu_ms()) if cpu_time else (lambda m: m.median_ms())
            ref, old, new = median(ms[t]), median(ms[f"baseline {b}"]), median(ms[b])
            cells += [fmt_ms(ref), fmt_ms(old / ref), fmt_ms(new / ref), f"{new / old:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SORTED_OFF = {"LMKAN_CPU_SORTED_FORWARD": "0"}  # the CPU kernels' switch for the cell-sorted large-table forward


def with_env(env: dict[str, str], fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with the environment variables `env` set (and restored after)."""
    def run():
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k)
                else:
                    os.environ[k] = v
    return run


def run_round_robin(methods: list[Method], device: torch.device, warmup: int, rounds: int, slow_rounds: int) -> None:
    """Time every method once per round (warm-up rounds first); slow methods stop after `slow_rounds`."""
    limits = {}
    for rnd in range(warmup + rounds):
        for m in methods:
            if rnd >= warmup and m.rounds >= limits.get(m.name, rounds):
                continue
            if rnd < warmup and m.name in limits:
                continue
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            m.fn()
            _sync(device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if rnd < warmup:
                if wall > SLOW_CALL_S:
                    limits[m.name] = slow_rounds
                continue
            m.wall.append(wall)
            m.cpu.append(cpu)
            m.rounds += 1


PER_CALL_SHAPE = (1, 288, 32, 8)  # (B, N_in, N_out, G)


def per_call_methods(calls: int) -> list[Method]:
    """nn.Linear, the bare native kernel, the one native call of an exact layer (affine map, lookup, bias), the lookup
    op and LMKANLinear with each input map that makes that one call: none, affine (the exact layer lmkanify builds)
    and quantile placement (the exact layer the planner builds from calibration data), each a loop of `calls` forward
    calls at batch 1 under torch.no_grad()."""
    from lmkan_surgery.kernels import build
    from lmkan_surgery.nn import LMKANLinear
    from lmkan_surgery.nn.placement import quantile_knots

    batch, n_in, n_out, grids = PER_CALL_SHAPE
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(n_in, n_out)
    mean, std = torch.randn(n_in, generator=gen), torch.rand(n_in, generator=gen) + 0.5
    layer = LMKANLinear.from_linear(linear, grids, mean, std)
    plain = LMKANLinear(n_in, n_out, grids)
    x = torch.randn(batch, n_in, generator=gen)
    calibration = mean + std * torch.randn(4096, n_in, generator=gen)
    placed = LMKANLinear.from_linear(linear, grids, input_knots=quantile_knots(calibration, grids))
    table = layer.table.detach()
    native = build.load_native("cpu")
    kernel = native.forward
    scale, shift, bias = (t.detach() for t in (layer.input_scale, layer.input_shift, layer.bias))

    def loop(fn):
        def run():
            with torch.no_grad():
                for _ in range(calls):
                    fn()
        return run

    return [Method("nn.Linear", loop(lambda: linear(x))),
            Method("kernel (native forward)", loop(lambda: kernel(x, table))),
            Method("kernel (one call: affine map, lookup, bias)",
                   loop(lambda: native.pointwise_forward(x, scale, shift, table, bias, [1, 1]))),
            Method("lmkan_lookup", loop(lambda: lmkan_lookup(x, table))),
            Method("LMKANLinear (input_norm none)", loop(lambda: plain(x))),
            Method("LMKANLinear (exact, affine norm)", loop(lambda: layer(x))),
            Method("LMKANLinear (exact, quantile placement)", loop(lambda: placed(x)))]


def report_per_call(methods: list[Method], calls: int) -> str:
    """Microseconds per call and the excess over the bare kernel."""
    kernel = methods[1].median_ms()
    lines = ["| method | us per call | over the kernel, us |", "|---|---|---|"]
    for m in methods:
        lines.append(f"| {m.name} | {1e3 * m.median_ms() / calls:.1f} | {1e3 * (m.median_ms() - kernel) / calls:.1f} |")
    return "\n".join(lines)


def report(rows: list[tuple[tuple[int, int, int, int], float, dict[str, Method]]], native: str) -> str:
    """A markdown table of times and ratios to nn.Linear."""
    head = (
        f"| shape (B, N_in, N_out, G) | table MB | linear fwd ms | ref fwd x | {native} fwd x | {native} fwd x (cpu time)"
        f" | ref / {native} fwd | linear fwd+bwd ms | ref fwd+bwd x | {native} fwd+bwd x | {native} fwd ms |"
        f" {native} fwd+bwd ms |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, mb, ms in rows:
        lin, lfb = ms["linear fwd"], ms["linear fwd+bwd"]
        missing = Method("missing", lambda: None)
        ref, rfb = ms.get("reference fwd", missing), ms.get("reference fwd+bwd", missing)
        nat, nfb = ms[f"{native} fwd"], ms[f"{native} fwd+bwd"]
        ref_n = f" (n={ref.rounds})" if 0 < ref.rounds < lin.rounds else ""
        rfb_n = f" (n={rfb.rounds})" if 0 < rfb.rounds < lin.rounds else ""
        cells = [
            str(shape), f"{mb:.1f}", fmt_ms(lin.median_ms()), fmt_ms(ref.median_ms() / lin.median_ms()) + ref_n,
            fmt_ms(nat.median_ms() / lin.median_ms()), fmt_ms(nat.median_cpu_ms() / lin.median_cpu_ms()),
            fmt_ms(ref.median_ms() / nat.median_ms()), fmt_ms(lfb.median_ms()),
            fmt_ms(rfb.median_ms() / lfb.median_ms()) + rfb_n, fmt_ms(nfb.median_ms() / lfb.median_ms()),
            fmt_ms(nat.median_ms()), fmt_ms(nfb.median_ms()),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_half(rows: list[tuple[tuple[int, int, int, int], float, dict[str, Method]]], native: str) -> str:
    """The half-precision-table forwards against nn.Linear and the float32-table forward of the same run."""
    halves = HALF_TABLES[native]
    head = f"| shape (B, N_in, N_out, G) | float32 table MB | {half_table_head(halves, 'linear')} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, mb, ms in rows:
        cells = [str(shape), f"{mb:.1f}"]
        for h in halves:
            cells += half_table_cells(ms[f"{native} {h} fwd"], ms[f"{native} fwd"], ms["linear fwd"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_paths(rows: list[tuple[tuple[int, int, int, int], float, dict[str, Method]]], native: str) -> str:
    """The forward as dispatched (cell-sorted on tables over 8 MB at >= 4 samples per cell) beside the same call with
    the cell-sorted forward off (the streamed forward, the path before it), both against nn.Linear of the same run."""
    head = ("| shape (B, N_in, N_out, G) | table MB | linear fwd ms | cell-sorted off fwd x (before) | fwd x (after) |"
            " after / before |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, mb, ms in rows:
        lin, new, old = (ms[k].median_ms() for k in ("linear fwd", f"{native} fwd", f"{native} streamed fwd"))
        lines.append("| " + " | ".join([str(shape), f"{mb:.1f}", fmt_ms(lin), fmt_ms(old / lin), fmt_ms(new / lin),
                                        f"{new / old:.2f}"]) + " |")
    return "\n".join(lines)


def report_small(rows: list[tuple[tuple[int, int, int, int], float, dict[str, Method]]], native: str) -> str:
    """The op's forward against nn.Linear and (few outputs) the teacher tail, and the bare kernel calls: us, ns per
    (sample, pair) of the forward, and (with --baseline) the previous build's bare calls beside them, same rounds."""
    head = ("| shape (B, N_in, N_out, G) | linear fwd us | teacher tail fwd us | op fwd us | op fwd x linear |"
            " op fwd x tail | kernel fwd us | kernel fwd ns per (sample, pair) | kernel fwd+bwd us |"
            " before: kernel fwd us | before: kernel fwd+bwd us | fwd after / before | fwd+bwd after / before |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    missing = Method("missing", lambda: None)
    for shape, _, ms in rows:
        lin, op = ms["linear fwd"].median_ms(), ms[f"{native} fwd"].median_ms()
        tail = ms.get("teacher tail fwd", missing).median_ms()
        kf, kfb = ms["kernel fwd"].median_ms(), ms["kernel fwd+bwd"].median_ms()
        bf, bfb = (ms.get(f"baseline kernel {k}", missing).median_ms() for k in ("fwd", "fwd+bwd"))
        per = 1e6 * kf / (shape[0] * shape[1] // 2)
        lines.append("| " + " | ".join([str(shape), f"{1e3 * lin:.1f}", f"{1e3 * tail:.1f}", f"{1e3 * op:.1f}",
                                        fmt_ms(op / lin), fmt_ms(op / tail), f"{1e3 * kf:.1f}", f"{per:.2f}",
                                        f"{1e3 * kfb:.1f}", f"{1e3 * bf:.1f}", f"{1e3 * bfb:.1f}", f"{kf / bf:.2f}",
                                        f"{kfb / bfb:.2f}"]) + " |")
    return "\n".join(lines)


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """Parse 'B,N_in,N_out,G;B,N_in,N_out,G' into shape tuples."""
    shapes = []
    for item in text.replace(" ", "").split(";"):
        if item:
            b, n_in, n_out, g = (int(v) for v in item.split(","))
            shapes.append((b, n_in, n_out, g))
    return shapes


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shapes", type=parse_shapes, help="'B,N_in,N_out,G;...' (default: the issue's shapes)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--slow-rounds", type=int, default=3, help="timed rounds of calls slower than 1 s")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) PyTorch reference")
    parser.add_argument("--quick", action="store_true", help="smoke test: small shapes, 1 warm-up, 3 rounds")
    parser.add_argument("--small", action="store_true", help="few-output and small training shapes at batch 256")
    parser.add_argument("--per-call", action="store_true", help=f"per-call cost at batch 1, shape {PER_CALL_SHAPE}")
    parser.add_argument("--baseline", help="another build's extension .so to time beside this one (CPU)")
    args = parser.parse_args(argv)
    baseline = load_baseline(args.baseline) if args.baseline else None
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.per_call:
        calls = 20 if args.quick else 200
        methods = per_call_methods(calls)
        run_round_robin(methods, device, args.warmup, args.rounds, args.slow_rounds)
        print(f"threads={torch.get_num_threads()} rounds={args.rounds} x {calls} calls, batch 1, (B, in, out, G) = "
              f"{PER_CALL_SHAPE}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
        print(report_per_call(methods, calls))
        return
    if device.type == "cuda":  # plain fp32 SGEMM for the nn.Linear baseline, as the paper measured
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SMALL_SHAPES if args.small else SHAPES[args.device])
    warmup, rounds = (1, 3) if args.quick else (args.warmup, args.rounds)
    rows = []
    for shape in shapes:
        with_reference = not args.no_reference and shape[0] * shape[1] // 2 * shape[2] <= REFERENCE_MAX_EVALS
        methods, mb = build_methods(shape, device, args.device, with_reference, baseline)
        methods = add_baseline(methods, baseline, (f"{args.device} fwd", f"{args.device} fwd+bwd"))
        run_round_robin(methods, device, warmup, rounds, args.slow_rounds)
        rows.append((shape, mb, {m.name: m for m in methods}))
        print(f"done {shape}", flush=True)
    print(f"device={args.device} threads={torch.get_num_threads()} warmup={warmup} rounds={rounds} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
    print(report(rows, args.device))
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print(report_half(rows, args.device))
    if device.type == "cpu":
        print(report_paths(rows, args.device))
    if args.small:
        print(report_small(rows, args.device))
    if baseline is not None:
        print(f"before: {args.baseline}")
        print(report_baseline(rows, f"{args.device} fwd", f"{args.device} fwd+bwd"))
        if device.type == "cpu":
            print("bare kernels (no op dispatch), process CPU time:")
            print(report_baseline(rows, "kernel fwd", "kernel fwd+bwd", cpu_time=True))


if __name__ == "__main__":
    main()
