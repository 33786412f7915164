"""Exactness of lmkanify's exact mode across input magnitudes, with and without calibration data, and on random-init
torchvision models without any arguments (the cases of issue 17). Prints one table; run it on two checkouts to
compare (e.g. PYTHONPATH=<other checkout>).

    python tools/bench_exactness.py
"""

from __future__ import annotations

import argparse
import math

import torch
import torchvision
from torch import nn

from lmkan_surgery import LMKANConfig, lmkanify

MAGNITUDES = [1e-12, 1e-9, 1e-6, 1e-3, 1.0, 1e3, 1e6, 1e9, 1e12, 1e19]


def _rel(reference: torch.Tensor, result: torch.Tensor) -> float:
    """max |difference| / max |reference| in float64 (nan when the result has NaN)."""
    if torch.isnan(result).any():
        return math.nan
    return float((reference.double() - result.double()).abs().max() / reference.double().abs().max())


def layer_sweep(num_grids: int) -> list[tuple[str, list[float]]]:
    """Relative error of a converted nn.Linear(64, 32) at each input magnitude, with data and without."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=False)  # no bias: the error is all in the scale-dependent lookup
    model = nn.Sequential(nn.Identity(), linear)
    config = LMKANConfig(num_grids=num_grids, skip_defaults=False, validate=False)
    rows = []
    for label, with_data in (("Linear, stats from data", True), ("Linear, no data", False)):
        errors = []
        for magnitude in MAGNITUDES:
            x = torch.randn(256, 64) * magnitude
            student, _ = lmkanify(model, config, example_inputs=x if with_data else None)
            with torch.no_grad():
                errors.append(_rel(linear.double()(x.double()), student(x)))
            linear.float()
        rows.append((label, errors))
    return rows


def model_error(name: str, num_grids: int, with_data: bool) -> float:
    """lmkanify(model) without arguments, or with example inputs, then the output error on fresh random images."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    example = torch.randn(2, 3, 64, 64) if with_data else None
    config = LMKANConfig(num_grids=num_grids, validate=False)
    student, _ = lmkanify(model, config, example_inputs=example)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return _rel(model(x), student(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-grids", type=int, default=8)
    parser.add_argument("--models", nargs="*", default=["mobilenet_v3_small", "mnasnet0_5"])
    args = parser.parse_args()
    print("input magnitude | " + " | ".join(f"{m:.0e}" for m in MAGNITUDES))
    for label, errors in layer_sweep(args.num_grids):
        print(f"{label} | " + " | ".join(f"{e:.1e}" for e in errors))
    for name in args.models:
        for with_data, how in ((False, "without arguments"), (True, "with example_inputs")):
            print(f"{name}, lmkanify {how}, G={args.num_grids}: relative output error on fresh inputs "
                  f"{model_error(name, args.num_grids, with_data):.2e}")


if __name__ == "__main__":
    main()
