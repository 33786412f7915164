"""Paper 4.1: fit a deep tanh teacher MLP R^32 -> R^1 with 2-hidden-layer MLP and lmKAN students.

The teacher labels one large fixed set of N(0, I) inputs once (cached); students train on it in the near-infinite
data regime and are compared on a held-out set at matched MSE (FLOPs and measured CPU time).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (ModelStore, base_parser, cache_dir, lmkan_backend_name, matched_ratios, mode_of,  # noqa: E402
                    output_dir, paper_schedule, plot_pareto, student_sweep, train_and_measure, write_results)

IN_DIM = 32
CONFIGS = {
    # teacher, labelled set, student widths, lmKAN grid, training (run times: docs/experiments.md)
    "smoke": dict(teacher_width=64, teacher_depth=3, n_train=2048, n_test=512, mlp_widths=[8, 16],
                  lmkan_widths=[8], num_grids=4, epochs=2, batch=256),
    "quick": dict(teacher_width=1024, teacher_depth=10, n_train=500_000, n_test=10_000,
                  mlp_widths=[16, 32, 64, 128, 256, 512], lmkan_widths=[16, 32, 64], num_grids=12, epochs=10,
                  batch=512),
    "full": dict(teacher_width=1024, teacher_depth=10, n_train=2_000_000, n_test=50_000,
                 mlp_widths=[32, 64, 128, 256, 512, 1024], lmkan_widths=[16, 32, 64, 128, 256], num_grids=12,
                 epochs=15, batch=1024),
}


def make_teacher(width: int, depth: int, seed: int) -> nn.Sequential:
    """10 tanh hidden layers of 1024 (paper): PyTorch default init with every weight matrix multiplied by 3."""
    torch.manual_seed(seed)
    dims = [IN_DIM] + [width] * depth
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(dims[-1], 1))
    teacher = nn.Sequential(*layers)
    with torch.no_grad():
        for m in teacher:
            if isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
    return teacher.eval()


@torch.no_grad()
def labelled_set(cfg: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I) and teacher(x) for n_train + n_test samples, cached with a manifest."""
    n = cfg["n_train"] + cfg["n_test"]
    name = f"teacher_w{cfg['teacher_width']}_d{cfg['teacher_depth']}_seed{seed}_n{n}"
    path = cache_dir("function_approx") / f"{name}.pt"
    if path.exists():
        data = torch.load(path)
        return data["x"], data["y"]
    teacher = make_teacher(cfg["teacher_width"], cfg["teacher_depth"], seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, IN_DIM, generator=gen)
    start = time.perf_counter()
    y = torch.cat([teacher(x[i:i + 8192]) for i in range(0, n, 8192)])
    torch.save({"x": x, "y": y}, path)
    manifest = {"teacher_width": cfg["teacher_width"], "teacher_depth": cfg["teacher_depth"], "seed": seed,
                "count": n, "label_seconds": round(time.perf_counter() - start, 1),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    return x, y


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep of the chosen config; write results.json and pareto.png."""
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    mode = mode_of(args)
    cfg = CONFIGS[mode]
    torch.set_num_threads(args.threads)
    x, y = labelled_set(cfg, args.seed)
    mean, std = y[:cfg["n_train"]].mean(), y[:cfg["n_train"]].std()
    y = (y - mean) / std  # students fit the standardised target; MSE is reported in the teacher's units
    x_train, y_train = x[:cfg["n_train"]], y[:cfg["n_train"]]
    x_test, y_test = x[cfg["n_train"]:], y[cfg["n_train"]:]
    fit_cfg = paper_schedule(args, cfg["epochs"], cfg["batch"], 2e-3, "regression")

    def evaluate(model: nn.Module) -> dict:
        with torch.no_grad():
            rel = float(nn.functional.mse_loss(model.eval()(x_test), y_test))
        return {"relative_mse": rel, "mse": rel * float(std) ** 2}

    out = output_dir(args, "function_approx")
    store = ModelStore(out, args.retime)

    def run(label: str, build: Callable[[], nn.Module]) -> dict:
        return train_and_measure(label, build, (x_train, y_train), fit_cfg, evaluate, x_test, args, store)

    mlp, lmkan = student_sweep(run, IN_DIM, cfg["mlp_widths"], cfg["lmkan_widths"], cfg["num_grids"])
    results = {"experiment": "function_approx", "mode": mode, "config": cfg, "fit": fit_cfg, "seed": args.seed,
               "lmkan_backend": lmkan_backend_name(), "target_std": float(std), "mlp": mlp, "lmkan": lmkan,
               "matched": matched_ratios(mlp, lmkan, "mse"),
               "paper": {"flops_reduction_max": 6.0, "h100_walltime_gain_max": 1.8, "mse_axis": [0.46, 0.6]}}
    plot_pareto({"MLP": mlp, "lmKAN": lmkan}, "mse", "test MSE", out / "pareto.png",
                f"teacher MLP R^32->R^1 ({mode})")
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
