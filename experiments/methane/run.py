"""Paper 4.2: GFN2-xTB energies of randomly displaced CH4, MLP vs lmKAN on Cartesian and distance features.

Cartesian components (the 4 C->H vectors, 12 features) are augmented with a random rotation (proper or improper)
and H permutation per sample; distances (10) and, as an extra not in the paper, inverse distances (10) with a
random H permutation. Metric: test RMSE / std of the target.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite workers; torch threads are set explicitly

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ModelStore, base_parser, cache_dir, lmkan_backend_name, matched_ratios, mode_of,  # noqa: E402
                    output_dir, paper_schedule, plot_pareto, student_sweep, train_and_measure, write_results)

from lmkan_surgery.distill import AugmentedTensors  # noqa: E402
from ch4_data import load_or_generate  # noqa: E402
from dft_data import BASIS, FUNCTIONAL, load_check_set  # noqa: E402

H_PAIRS = [(i, j) for i in range(4) for j in range(i + 1, 4)]
REPRESENTATIONS = {"cartesian": 12, "distances": 10, "inverse_distances": 10}
CONFIGS = {
    "smoke": dict(count=600, n_test=100, mlp_widths=[8, 16], lmkan_widths=[8], num_grids=4, epochs=3, batch=64,
                  workers=1, dft_check=3),
    "quick": dict(count=100_000, n_test=10_000, mlp_widths=[16, 64, 256, 1024], lmkan_widths=[8, 16, 32], num_grids=28,
                  epochs=11, batch=512, workers=2, dft_check=1500),
    "full": dict(count=1_000_000, n_test=50_000, mlp_widths=[16, 32, 64, 128, 256, 512, 1024],
                 lmkan_widths=[8, 16, 32, 64, 128], num_grids=28, epochs=100, batch=1024, workers=2, dft_check=1500),
}
PAPER = {"cartesian": {"flops_reduction": 78.0, "h100_walltime_gain": 12.9},
         "distances": {"flops_reduction": 1021.5, "h100_walltime_gain": 71.6},
         "inverse_distances": "not in the paper: added because raw distances fit poorly at this data scale"}


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, 3, 3] Haar-random orthogonal matrices (rotations and improper rotations)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def augment(vectors: torch.Tensor, rotate: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly permute the 4 C->H vectors of each sample and, if asked, rotate them."""
    perm = torch.rand(vectors.shape[:2], generator=generator).argsort(dim=1)
    vectors = torch.gather(vectors, 1, perm.unsqueeze(-1).expand_as(vectors))
    if rotate:
        vectors = vectors @ random_orthogonal(len(vectors), generator)
    return vectors


def features(vectors: torch.Tensor, representation: str) -> torch.Tensor:
    """Cartesian components [N, 12], the 10 interatomic distances (4 C-H, then 6 H-H) or their inverses, from the
    C->H vectors [N, 4, 3]."""
    if representation == "cartesian":
        return vectors.reshape(len(vectors), 12)
    ch = vectors.norm(dim=-1)
    hh = torch.stack([(vectors[:, i] - vectors[:, j]).norm(dim=-1) for i, j in H_PAIRS], dim=1)
    distances = torch.cat([ch, hh], dim=1)
    return 1.0 / distances if representation == "inverse_distances" else distances


def tracking(prediction: torch.Tensor, reference: torch.Tensor) -> dict:
    """How well energies track a reference up to a constant offset (two levels of theory differ by one): RMSE of
    the offset-removed difference / std of the reference, and the Pearson correlation."""
    prediction, reference = prediction.double().flatten(), reference.double().flatten()
    diff = prediction - reference
    pearson = torch.corrcoef(torch.stack([prediction, reference]))[0, 1]
    return {"relative_rmse": float(diff.std(correction=0) / reference.std(correction=0)), "pearson": float(pearson)}


def run_representation(representation: str, vectors: torch.Tensor, energies: torch.Tensor, cfg: dict,
                       args: argparse.Namespace, store: ModelStore, check: dict[str, torch.Tensor] | None) -> dict:
    """Train both families on one representation; returns its results block. With a DFT check set, every model is
    also scored against its GFN2-xTB and its DFT energies."""
    n_train = len(vectors) - cfg["n_test"]
    train_v, test_v = vectors[:n_train], vectors[n_train:]
    mean, std = energies[:n_train].mean(), energies[:n_train].std()
    target = (energies - mean) / std
    train_y, test_y = target[:n_train], target[n_train:]
    rotate = representation == "cartesian"
    gen = torch.Generator().manual_seed(args.seed)
    reference = features(augment(train_v, rotate, gen), representation)
    f_mean, f_std = reference.mean(0), reference.std(0)
    x_test = (features(test_v, representation) - f_mean) / f_std
    fit_cfg = paper_schedule(args, cfg["epochs"], cfg["batch"], 1e-3, "regression")

    def featurize(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        vectors, y = batch
        return (features(augment(vectors, rotate), representation) - f_mean) / f_std, y

    train_data = AugmentedTensors(train_v, train_y, augment=featurize)

    def evaluate(model: nn.Module) -> dict:
        with torch.no_grad():
            rel_mse = float(nn.functional.mse_loss(model.eval()(x_test), test_y))
            row = {"relative_rmse": rel_mse ** 0.5, "rmse_hartree": rel_mse ** 0.5 * float(std)}
            if check is not None:
                x_check = (features(check["vectors"], representation) - f_mean) / f_std
                energy = model(x_check) * std + mean
                row["check_vs_xtb"] = tracking(energy, check["xtb"])
                row["check_vs_dft"] = tracking(energy, check["dft"])
        return row

    def run(label: str, build: Callable[[], nn.Module]) -> dict:
        return train_and_measure(f"{representation}: {label}", build, train_data, fit_cfg, evaluate, x_test, args,
                                 store)

    dim = REPRESENTATIONS[representation]
    mlp, lmkan = student_sweep(run, dim, cfg["mlp_widths"], cfg["lmkan_widths"], cfg["num_grids"],
                               preconditioning=args.preconditioning)
    return {"n_features": dim, "target_std_hartree": float(std), "fit": fit_cfg, "mlp": mlp, "lmkan": lmkan,
            "matched": matched_ratios(mlp, lmkan, "relative_rmse"), "paper": PAPER[representation]}


def dft_check_set(cfg: dict, seed: int) -> dict[str, torch.Tensor] | None:
    """The cached DFT check set (C->H vectors, xTB and DFT energies), or None with a note on how to make it."""
    if not cfg["dft_check"]:
        return None
    data = load_check_set(cfg["dft_check"], seed)
    if data is None:
        print(f"no DFT check set cached: `python experiments/methane/dft_data.py --count {cfg['dft_check']} "
              f"--seed {seed}` makes one (pyscf, ~2 s per configuration); continuing without it", flush=True)
        return None
    positions = torch.from_numpy(data["positions"])
    return {"vectors": positions[:, 1:] - positions[:, :1], "xtb": torch.from_numpy(data["energies_xtb"]),
            "dft": torch.from_numpy(data["energies_dft"])}


def main(argv: list[str] | None = None) -> dict:
    """Label (or load) the configurations, run both representations, write results.json and the Pareto plots."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--representations", nargs="+", default=list(REPRESENTATIONS), choices=list(REPRESENTATIONS))
    parser.add_argument("--preconditioning", choices=["relu_last", "relu_first"], default="relu_last",
                        help="the paper used ReLU-last for every methane model (default)")
    args = parser.parse_args(argv)
    mode = mode_of(args)
    cfg = CONFIGS[mode]
    torch.set_num_threads(args.threads)
    positions, energies = load_or_generate(cfg["count"], args.seed, cache_dir("methane"), cfg["workers"])
    vectors = torch.from_numpy(np.ascontiguousarray(positions[:, 1:] - positions[:, :1]))
    energies_t = torch.from_numpy(energies).float().unsqueeze(1)
    out = output_dir(args, "methane")
    store = ModelStore(out, args.retime)
    check = dft_check_set(cfg, args.seed)
    results = {"experiment": "methane", "mode": mode, "config": cfg, "seed": args.seed, "count": len(vectors),
               "preconditioning": args.preconditioning, "lmkan_backend": lmkan_backend_name(), "representations": {}}
    if check is not None:
        results["dft_check"] = {"method": f"{FUNCTIONAL}/{BASIS}", "count": len(check["dft"]),
                                "xtb_vs_dft": tracking(check["xtb"], check["dft"])}
    for representation in args.representations:
        block = run_representation(representation, vectors, energies_t, cfg, args, store, check)
        results["representations"][representation] = block
        plot_pareto({"MLP": block["mlp"], "lmKAN": block["lmkan"]}, "relative_rmse", "test RMSE / std",
                    out / f"pareto_{representation}.png", f"CH4 GFN2-xTB, {representation} ({mode})")
        write_results(out, results)  # after every representation: a long run keeps what it finished
    return results


if __name__ == "__main__":
    main()
