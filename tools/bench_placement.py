"""Cost of quantile input placement on CPU: an LMKANLinear with input_norm="quantile" vs the same layer with affine
normalisation, the map run by the native one-pass kernel vs by standard ops, and nn.Linear of the same shape;
forward (inference) and forward+backward, round-robin medians in one process.

    OMP_WAIT_POLICY=PASSIVE python tools/bench_placement.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable
from unittest import mock

import torch
from torch import nn

from lmkan_surgery import LMKANLinear
from lmkan_surgery.nn import placement

SHAPES = [(1, 288, 32, 8), (256, 32, 64, 8), (4096, 128, 128, 8), (4096, 512, 512, 16)]


def _layer(n_in: int, n_out: int, num_grids: int, norm: str, calibration: torch.Tensor) -> LMKANLinear:
    layer = LMKANLinear(n_in, n_out, num_grids, input_norm=norm)
    if norm == "quantile":
        layer.calibrate_placement(calibration)
    return layer


def _methods(batch: int, n_in: int, n_out: int, num_grids: int) -> dict[str, Callable[[bool], None]]:
    """name -> run(backward) for one shape."""
    torch.manual_seed(0)
    calibration = torch.randn(4096, n_in).exp()
    x = torch.randn(batch, n_in).exp()
    quantile, affine = (_layer(n_in, n_out, num_grids, n, calibration) for n in ("quantile", "affine"))
    linear = nn.Linear(n_in, n_out)

    def run(module: nn.Module, standard_ops: bool = False) -> Callable[[bool], None]:
        def call(backward: bool) -> None:
            if not backward:
                with torch.inference_mode():
                    module(x)
                return
            xg = x.clone().requires_grad_(True)
            module(xg).sum().backward()

        def with_standard_ops(backward: bool) -> None:  # the patch costs ~ a microsecond: noise beside these
            with mock.patch.object(placement, "native_place", lambda _x: None):
                call(backward)

        return with_standard_ops if standard_ops else call

    return {"nn.Linear": run(linear), "lmKAN affine": run(affine), "lmKAN quantile (native)": run(quantile),
            "lmKAN quantile (standard ops)": run(quantile, standard_ops=True)}


def _median_ms(fn: Callable[[bool], None], backward: bool, rounds: int, calls: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn(backward)
        times.append((time.perf_counter() - start) / calls * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; round-robin medians of {args.rounds} rounds; ms per call; ratio to nn.Linear")
    print("| batch x in -> out, G | pass | nn.Linear | lmKAN affine | quantile, native | quantile, standard ops |")
    print("|---|---|---|---|---|---|")
    for batch, n_in, n_out, g in SHAPES:
        methods = _methods(batch, n_in, n_out, g)
        calls = max(1, 2000 // batch)
        for backward in (False, True):
            samples = {name: [] for name in methods}
            for fn in methods.values():
                fn(backward)  # warm-up (kernel build, allocator)
            for _ in range(args.rounds):
                for name, fn in methods.items():
                    samples[name] += _median_ms(fn, backward, 1, calls)
            med = {name: statistics.median(v) for name, v in samples.items()}
            base = med["nn.Linear"]
            cells = [f"{med[n]:.3f} ({med[n] / base:.1f}x)" for n in methods]
            print(f"| {batch} x {n_in} -> {n_out}, G={g} | {'fwd+bwd' if backward else 'fwd'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
