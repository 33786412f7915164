"""Paper 4.3: the CIFAR-10 backbone (five 2x2 stride-2 convs of width W, FC W->W->10) on Fashion-MNIST padded to
32x32, MLP-CNN (BN + ReLU) vs lmKAN-CNN (BN affine=False before every lmKAN layer, no activations)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (ModelStore, base_parser, classifier_task, fashion_mnist, lmkan_backend_name,  # noqa: E402
                    matched_ratios, mode_of, output_dir, paper_schedule, plot_pareto, train_and_measure,
                    write_results)

from lmkan_surgery import LMKANConv2d, LMKANLinear  # noqa: E402

N_CONVS = 5
CONFIGS = {
    "smoke": dict(n_train=512, widths=[8], lmkan_widths=[8], num_grids=4, epochs=1, batch=128, synthetic=True),
    "quick": dict(n_train=None, widths=[8, 16, 32], lmkan_widths=[8, 16, 32], num_grids=8, epochs=5, batch=128,
                  synthetic=False),
    "full": dict(n_train=None, widths=[8, 16, 32, 64], lmkan_widths=[8, 16, 32, 64], num_grids=8, epochs=60,
                 batch=128, synthetic=False),
}
PAPER = {"flops_reduction_range": [1.6, 2.1], "dataset": "CIFAR-10 (accuracy axis ~50-80%)"}


def mlp_cnn(width: int, in_channels: int = 1) -> nn.Sequential:
    """Conv(2x2, s2)-BN-ReLU x5, then Linear-BN-ReLU and Linear to 10 classes."""
    layers: list[nn.Module] = []
    for i in range(N_CONVS):
        layers += [nn.Conv2d(in_channels if i == 0 else width, width, 2, stride=2), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def lmkan_cnn(width: int, num_grids: int, in_channels: int = 1) -> nn.Sequential:
    """The same backbone with every layer an lmKAN layer behind BN(affine=False), no activations, ReLU-first
    preconditioned as in the paper: a linear branch on the first layer, Conv/Linear(ReLU(u)) on the others, so the
    network starts as a ReLU CNN (gamma = 0) and the branches fold into the tables at inference."""
    layers: list[nn.Module] = []
    for i in range(N_CONVS):
        c_in = in_channels if i == 0 else width
        layers += [nn.BatchNorm2d(c_in, affine=False),
                   LMKANConv2d(c_in, width, 2, stride=2, num_grids=num_grids,
                               preconditioning="linear" if i == 0 else "relu_first")]
    layers.append(nn.Flatten())
    for c_out in (width, 10):
        layers += [nn.BatchNorm1d(width, affine=False),
                   LMKANLinear(width, c_out, num_grids, preconditioning="relu_first")]
    return nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> dict:
    """Train both CNN families over the widths; write results.json and pareto.png."""
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    mode = mode_of(args)
    cfg = CONFIGS[mode]
    torch.set_num_threads(args.threads)
    train, test = fashion_mnist(cfg["n_train"], flatten=False, pad_to=32, synthetic=cfg["synthetic"], seed=args.seed)
    train_data, evaluate = classifier_task(train, test, hflip=True)
    fit_cfg = paper_schedule(args, cfg["epochs"], cfg["batch"], 3e-3, "classification", weight_decay=1e-4)

    out = output_dir(args, "lmkan_cnn")
    store = ModelStore(out, args.retime)

    def run(label: str, build: Callable[[], nn.Module]) -> dict:
        return train_and_measure(label, build, train_data, fit_cfg, evaluate, test[0][:1024], args, store)

    mlp = [dict(run(f"MLP-CNN W={w}", lambda: mlp_cnn(w)), width=w) for w in cfg["widths"]]
    lmkan = [dict(run(f"lmKAN-CNN W={w} G={cfg['num_grids']}", lambda: lmkan_cnn(w, cfg["num_grids"])), width=w)
             for w in cfg["lmkan_widths"]]
    results = {"experiment": "lmkan_cnn", "mode": mode, "config": cfg, "fit": fit_cfg, "seed": args.seed,
               "lmkan_backend": lmkan_backend_name(), "mlp": mlp, "lmkan": lmkan,
               "matched": matched_ratios(mlp, lmkan, "test_error"), "paper": PAPER}
    plot_pareto({"MLP-CNN": mlp, "lmKAN-CNN": lmkan}, "test_error", "test error (1 - accuracy)",
                out / "pareto.png", f"Fashion-MNIST 32x32, CIFAR backbone ({mode})")
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
