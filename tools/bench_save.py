"""What safe saving costs: lmkan_surgery.save (per-tensor SHA-256, temp file, fsync, rename) and load (checksums
verified) beside plain torch.save / torch.load of the same state_dict, round-robin medians in one run.

python tools/bench_save.py --width 1024 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import lmkan_surgery
from lmkan_surgery import LMKANConfig, lmkanify


def factory(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024, help="hidden width (the converted middle layer dominates)")
    parser.add_argument("--num-grids", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    student, _ = lmkanify(factory(args.width), LMKANConfig(num_grids=args.num_grids), example_inputs=torch.randn(8, 64))
    state = {k: v.detach() for k, v in student.state_dict().items()}
    size = sum(v.numel() * v.element_size() for v in state.values())
    with tempfile.TemporaryDirectory() as folder:
        plain, safe = Path(folder) / "plain.pt", Path(folder) / "safe.lmkan"
        runs = {
            "torch.save": lambda: torch.save(state, plain),
            "lmkan_surgery.save": lambda: lmkan_surgery.save(student, safe),
            "torch.load": lambda: torch.load(plain, weights_only=True),
            "lmkan_surgery.load": lambda: lmkan_surgery.load(safe, lambda: factory(args.width)),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds + 1):  # the first round warms the page cache and is dropped
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    print(f"state_dict {size / 1e6:.0f} MB, {args.rounds} rounds (median s)")
    for name, values in times.items():
        print(f"{name:20s} {statistics.median(values[1:]):8.3f}")
    ratio = {op: statistics.median(times[f"lmkan_surgery.{op}"][1:]) / statistics.median(times[f"torch.{op}"][1:])
             for op in ("save", "load")}
    print(f"save ratio {ratio['save']:.2f}x, load ratio {ratio['load']:.2f}x")


if __name__ == "__main__":
    main()
