"""Benchmark one converted model three ways: onnxruntime with the native lmkan library, the torch CPU kernel, and
onnxruntime running the standard-op function body. Same threads on every side, round-robin, medians.

Example (the numbers in docs/benchmarks.md, "ONNX runtime")::

    .venv/bin/python tools/bench_onnx.py --threads 2 --rounds 15 --append-docs docs/benchmarks.md

The function body gathers [rows, P, N_out] tensors per term, so it is fed in chunks of --fb-chunk rows (the same
file, dynamic batch); its time is the sum over the chunks of one batch.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from lmkan_surgery import LMKANConv2d, LMKANLinear
from lmkan_surgery.onnx import export_onnx, session
from lmkan_surgery.ops import dispatch


def mlp(grids: int) -> nn.Module:
    """The 512-512-512 lmKAN MLP (random tables)."""
    return nn.Sequential(LMKANLinear(512, 512, grids, init_scale=1.0), nn.ReLU(),
                         LMKANLinear(512, 512, grids, init_scale=1.0))


def cnn(grids: int) -> nn.Module:
    """A small all-lmKAN CNN for 3x32x32 inputs."""
    return nn.Sequential(LMKANConv2d(3, 16, 3, padding=1, num_grids=grids, init_scale=1.0), nn.ReLU(),
                         LMKANConv2d(16, 32, 3, stride=2, padding=1, num_grids=grids, init_scale=1.0), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), LMKANLinear(32, 10, grids, init_scale=1.0))


def cpu_model() -> str:
    """The CPU model name from lscpu (platform.processor() otherwise)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def ort_runner(path: Path, use_library: bool, threads: int, x: np.ndarray, chunk: int) -> Callable[[], None]:
    """A callable running the file on x (in chunks of `chunk` rows) via the chosen path."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning into torch's turn
    sess = session(path, use_library=use_library, sess_options=options)
    name = sess.get_inputs()[0].name
    parts = [x[i:i + chunk] for i in range(0, x.shape[0], chunk)]
    return lambda: [sess.run(None, {name: p}) for p in parts]


def round_robin(methods: dict[str, Callable[[], None]], warmup: int, rounds: int) -> dict[str, float]:
    """Median wall time (ms) of each method, timing all methods once per round."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for rnd in range(warmup + rounds):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            if rnd >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_model(name: str, model: nn.Module, x: torch.Tensor, args, workdir: Path) -> dict[str, float]:
    """Export, check and time one model; returns median ms per method."""
    model.eval()
    path = workdir / f"{name}.onnx"
    result = export_onnx(model, path, (x[:8],))
    print(result)
    xn = x.numpy()

    def torch_run():
        with torch.no_grad():
            model(x)

    methods = {
        "torch CPU kernel": torch_run,
        "ORT native library": ort_runner(path, True, args.threads, xn, x.shape[0]),
        "ORT function body": ort_runner(path, False, args.threads, xn, args.fb_chunk),
    }
    return round_robin(methods, args.warmup, args.rounds)


def table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    """A markdown table: ms per method and ratios against the torch kernel."""
    lines = ["| model | batch | torch CPU kernel (ms) | ORT native (ms) | ORT function body (ms) | native / torch | "
             "function body / native |", "|---|---|---|---|---|---|---|"]
    for name, batch, t in rows:
        torch_ms, native, body = t["torch CPU kernel"], t["ORT native library"], t["ORT function body"]
        lines.append(f"| {name} | {batch} | {torch_ms:.2f} | {native:.2f} | {body:.2f} | {native / torch_ms:.2f}x | "
                     f"{body / native:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run both models, print (and optionally append) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grids", type=int, default=8)
    parser.add_argument("--mlp-batch", type=int, default=4096)
    parser.add_argument("--cnn-batch", type=int, default=64)
    parser.add_argument("--fb-chunk", type=int, default=512, help="rows per function-body call")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--append-docs", type=Path, default=None, help="append an 'ONNX runtime' section here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [(f"MLP 512-512-512, G={args.grids}", mlp(args.grids), torch.randn(args.mlp_batch, 512)),
             (f"CNN 3-16-32 conv + 32-10, G={args.grids}", cnn(args.grids), torch.randn(args.cnn_batch, 3, 32, 32))]
    backend = dispatch.backend_for(torch.zeros(1, 2), torch.zeros(1, args.grids + 1, args.grids + 1, 1)).name
    print(f"torch backend of the lmKAN op: {backend}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, model, x) in enumerate(cases):
            rows.append((name, str(x.shape[0]), bench_model(f"model{k}", model, x, args, Path(tmp))))
    text = table(rows)
    print(text)
    if args.append_docs is not None:
        import onnxruntime

        command = "tools/bench_onnx.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "append_docs")
        section = (f"\n## ONNX runtime\n\n`{command}`  \nMachine: {cpu_model()}, {args.threads} threads on every side "
                   f"(torch.set_num_threads, ORT intra_op_num_threads, no spinning); torch op backend `{backend}`; "
                   f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}; date "
                   f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Round-robin medians of "
                   f"{args.rounds} rounds after {args.warmup} warm-up rounds; the function body is fed "
                   f"{args.fb_chunk}-row chunks (it gathers [rows, P, N_out] per term).\n\n{text}\n")
        with open(args.append_docs, "a", encoding="utf-8") as f:
            f.write(section)


if __name__ == "__main__":
    main()
