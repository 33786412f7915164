"""Shared helpers of the paper reproductions: seeds, caches, training, FLOPs, timing, Pareto matching and plots."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from lmkan_surgery import LMKANLayer, LMKANLinear
from lmkan_surgery.distill import AugmentedTensors, TrainConfig, train_lmkan
from lmkan_surgery.report.flops import lmkan_layer_macs

Batch = tuple[torch.Tensor, torch.Tensor]


def seed_all(seed: int) -> None:
    """Seed the torch and numpy RNGs the experiments draw from."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def cache_dir(*parts: str) -> Path:
    """$LMKAN_DATA_DIR or ~/.cache/lmkan_surgery/experiments, joined with parts and created."""
    root = Path(os.environ.get("LMKAN_DATA_DIR", Path.home() / ".cache" / "lmkan_surgery" / "experiments"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    """The command line every experiment shares (config, output folder, seed, threads, LR, retiming)."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the CPU-scale config (minutes)")
    mode.add_argument("--smoke", action="store_true", help="a seconds-long config for the test suite")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: experiments/<name>/out/<mode>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--timing-threads", type=int, default=2, help="torch threads for inference timing")
    parser.add_argument("--lr", type=float, default=None, help="override the experiment's learning rate")
    parser.add_argument("--hessian-floor", type=_fraction, default=0.0,
                        help="hold the Hessian weight at this value after its decay instead of switching it off")
    parser.add_argument("--retime", action="store_true",
                        help="reuse the models a previous run of the same config stored under <out>/models (only "
                             "re-measuring their time); train only the missing ones")
    return parser


def _fraction(text: str) -> float:
    """A float in [0, 1) (argparse type)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def mode_of(args: argparse.Namespace) -> str:
    """'smoke', 'quick' or 'full' from the parsed flags."""
    return "smoke" if args.smoke else "quick" if args.quick else "full"


# ---------------------------------------------------------------- training


def paper_schedule(args: argparse.Namespace, epochs: int, batch_size: int, default_lr: float, task: str,
                   weight_decay: float = 0.0) -> TrainConfig:
    """The paper README's recipe compressed to `epochs`, for `train_lmkan`: Hessian lambda decays log-linearly from 1
    by 8 decades over the first half, then 0 (or, with --hessian-floor, is held at that floor from there on, the
    paper's remedy for overfitting a fixed data set); LR (--lr or default_lr) constant, then a cosine to 0 over the
    second half; gamma of the preconditioned layers ramps 0 -> 0.3 between 5% and 20% of the run. MLPs get the
    same LR schedule."""
    half = epochs / 2
    floor = args.hessian_floor
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=args.lr or default_lr, weight_decay=weight_decay,
                       task=task, warmup=0.0, cosine_start=0.5, hessian_start=1.0,
                       hessian_decay_epochs=half / math.log10(1.0 / floor) if floor else half / 8,
                       hessian_floor=floor, hessian_off_epoch=None if floor else half, gamma_target=0.3,
                       gamma_start_epoch=0.05 * epochs, gamma_ramp_epochs=0.15 * epochs, seed=args.seed,
                       device="cpu", progress=sys.stderr.isatty())


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Model outputs over x in eval mode, in batches."""
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def mlp_student(in_dim: int, width: int, out_dim: int = 1) -> nn.Sequential:
    """The paper's MLP student: (Linear-BN-ReLU) x2 then Linear."""
    return nn.Sequential(nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, out_dim))


def lmkan_student(in_dim: int, width: int, num_grids: int, out_dim: int = 1,
                  preconditioning: str = "relu_first") -> nn.Sequential:
    """The paper's lmKAN student: (lmKAN-BN(affine=False)) x2 then lmKAN, with the paper's preconditioning.

    ReLU-first (Eq. 12b): the ReLU sits in every layer but the first, which gets a plain linear branch; ReLU-last
    (Eq. 12a): in every layer but the last. gamma starts at 0, so the network starts as the MLP student; the linear
    and ReLU-first branches are folded into the tables at inference, a ReLU-last branch costs one Linear more.
    """
    kinds = {"relu_first": ("linear", "relu_first", "relu_first"), "relu_last": ("relu_last", "relu_last", "linear")}
    first, middle, last = kinds[preconditioning]
    return nn.Sequential(LMKANLinear(in_dim, width, num_grids, bias=False, preconditioning=first),
                         nn.BatchNorm1d(width, affine=False),
                         LMKANLinear(width, width, num_grids, bias=False, preconditioning=middle),
                         nn.BatchNorm1d(width, affine=False),
                         LMKANLinear(width, out_dim, num_grids, bias=False, preconditioning=last))


def student_sweep(run: Callable[[str, Callable[[], nn.Module]], dict], in_dim: int, mlp_widths: list[int],
                  lmkan_widths: list[int], num_grids: int, out_dim: int = 1,
                  preconditioning: str = "relu_first") -> tuple[list[dict], list[dict]]:
    """run(label, build) over both student families; returns (MLP rows, lmKAN rows), each row with its width."""
    mlp = [dict(run(f"MLP h={w}", lambda: mlp_student(in_dim, w, out_dim)), width=w) for w in mlp_widths]
    tag = "" if preconditioning == "relu_first" else " ReLU-last"
    lmkan = [dict(run(f"lmKAN h={w} G={num_grids}{tag}",
                      lambda: lmkan_student(in_dim, w, num_grids, out_dim, preconditioning)), width=w)
             for w in lmkan_widths]
    return mlp, lmkan


def fashion_mnist(n_train: int | None, flatten: bool, pad_to: int = 28, synthetic: bool = False,
                  seed: int = 0) -> tuple[Batch, Batch]:
    """Normalised Fashion-MNIST ((x_train, y_train), (x_test, y_test)): the first n_train training images, padded
    with the background value to pad_to x pad_to or flattened. synthetic=True gives as many random images with
    random labels instead (the smoke configs need no data set)."""
    from lmkan_surgery.data import load_fashion_mnist

    splits = []
    for split in ("train", "test"):
        if synthetic:
            gen = torch.Generator().manual_seed(seed + len(splits))
            x = torch.randn(n_train, 1, pad_to, pad_to, generator=gen)
            y = torch.randint(0, 10, (n_train,), generator=gen)
        else:
            x, y = load_fashion_mnist(split, as_dataset=False)
            if split == "train" and n_train is not None:
                x, y = x[:n_train], y[:n_train]
            pad = (pad_to - x.shape[-1]) // 2
            if pad:
                x = nn.functional.pad(x, (pad, pad, pad, pad), value=float(x.min()))
        splits.append((x.reshape(len(x), -1) if flatten else x, y))
    return splits[0], splits[1]


def classifier_task(train: Batch, test: Batch, hflip: bool = False) -> tuple[object, Callable[[nn.Module], dict]]:
    """(training data for train_lmkan, evaluate) of a classification set: the training tensors (with random
    horizontal flips of half of every batch's images if asked) and test accuracy / error."""

    def flip(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x, y = batch
        flipped = torch.rand(len(x)) < 0.5
        return torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x), y

    def evaluate(model: nn.Module) -> dict:
        accuracy = float((predict(model, test[0]).argmax(1) == test[1]).float().mean())
        return {"test_accuracy": accuracy, "test_error": 1.0 - accuracy}

    return (AugmentedTensors(*train, augment=flip) if hflip else train), evaluate


# ---------------------------------------------------------------- cost: FLOPs and time


def model_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Dominant multiply-adds per sample (the paper's convention): Linear/Conv N_in*N_out per output position,
    lmKAN layers by the report package's formula (2*N_in*N_out); BN, activations and the O(N) lookup preamble are
    ignored."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, LMKANLayer):
            total += lmkan_layer_macs(module, output.shape)
        elif hasattr(module, "macs_per_sample"):  # baseline layers of the experiments define their own count
            total += module.macs_per_sample()
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            total += output[0, 0].numel() * module.weight[0].numel() * module.out_channels

    # foldable preconditioning branches are merged into the tables at inference: they cost nothing (a ReLU-last
    # branch stays and is counted as the Linear it is)
    inner = {id(m.branch) for m in model.modules() if isinstance(m, LMKANLayer) and m.branch is not None
             and m.foldable}
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if (isinstance(m, (nn.Linear, nn.Conv2d, LMKANLayer)) or hasattr(m, "macs_per_sample"))
               and id(m) not in inner]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy for timing: foldable preconditioning branches folded into the tables, Linear/Conv + BN pairs
    fused."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, LMKANLayer) and module.foldable:
            module.fold()
    return _fuse_bn(model)


def _fuse_bn(module: nn.Module) -> nn.Module:
    """Fuse every Linear/Conv2d directly followed by a BatchNorm inside an nn.Sequential (recursively)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    for child in module.children():
        _fuse_bn(child)
    if isinstance(module, nn.Sequential):
        layers = list(module)
        for i in range(len(layers) - 1):
            a, b = layers[i], layers[i + 1]
            if isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d)) and b.affine:
                if type(a) is nn.Linear:
                    module[i], module[i + 1] = fuse_linear_bn_eval(a, b), nn.Identity()
                elif type(a) is nn.Conv2d:
                    module[i], module[i + 1] = fuse_conv_bn_eval(a, b), nn.Identity()
    return module


@torch.no_grad()
def seconds_per_sample(model: nn.Module, example: torch.Tensor, threads: int = 2, batch: int = 4096,
                       repeats: int = 7) -> float:
    """Fastest (least disturbed on a shared machine) batched CPU time per sample of the folded/fused model."""
    model = inference_copy(model)
    x = example[:batch]
    if len(x) < batch:
        x = x.repeat(math.ceil(batch / len(x)), *[1] * (x.dim() - 1))[:batch]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(2):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(times) / batch


# ---------------------------------------------------------------- matched-accuracy comparison


def pareto_front(costs: Iterable[float], errors: Iterable[float]) -> list[tuple[float, float]]:
    """Points not dominated in (cost, error), sorted by cost with strictly decreasing error."""
    front: list[tuple[float, float]] = []
    for c, e in sorted(zip(costs, errors)):
        if not front or e < front[-1][1]:
            front.append((c, e))
    return front


def cost_at_error(costs: Iterable[float], errors: Iterable[float], target: float) -> tuple[float, str]:
    """Cost at which the baseline's Pareto curve reaches `target` error, interpolated in log-log.

    Returns (cost, kind): kind 'interpolated'; 'beyond' when the baseline never reaches the target (cost is then
    the baseline's largest cost: a lower bound); 'below' when even the cheapest baseline beats it (an upper bound).
    """
    front = pareto_front(costs, errors)
    if target < front[-1][1]:
        return front[-1][0], "beyond"
    if target >= front[0][1]:
        return front[0][0], "below"
    for (c0, e0), (c1, e1) in zip(front, front[1:]):
        if e1 <= target <= e0:
            w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(c0) + w * (math.log(c1) - math.log(c0))), "interpolated"
    raise AssertionError("unreachable")


def matched_ratios(baseline: list[dict], candidates: list[dict], error_key: str) -> list[dict]:
    """Per candidate: baseline FLOPs and time at the candidate's error, and the reduction factors."""
    rows = []
    for cand in candidates:
        row = {"label": cand["label"], error_key: cand[error_key]}
        for cost in ("flops", "seconds_per_sample"):
            base_cost, kind = cost_at_error([b[cost] for b in baseline], [b[error_key] for b in baseline],
                                            cand[error_key])
            row[f"{cost}_ratio"] = base_cost / cand[cost]
            row[f"{cost}_ratio_kind"] = kind
        rows.append(row)
    return rows


# ---------------------------------------------------------------- outputs


def write_results(out_dir: Path, results: dict) -> Path:
    """Write results.json (indented) into out_dir and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, default=_jsonable))
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plot_pareto(series: dict[str, list[dict]], error_key: str, error_label: str, path: Path, title: str,
                cost_keys: tuple[str, ...] = ("flops", "seconds_per_sample")) -> Path:
    """Error vs each cost (log-log), one line per model family; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = next((p["timing_threads"] for points in series.values() for p in points if "timing_threads" in p), "?")
    labels = {"flops": "multiply-adds per sample", "seconds_per_sample": f"CPU s/sample ({threads} thread(s), batched)",
              "params_per_function": "parameters per function"}
    fig, axes = plt.subplots(1, len(cost_keys), figsize=(5.2 * len(cost_keys), 4), squeeze=False)
    for ax, cost in zip(axes[0], cost_keys):
        for name, points in series.items():
            pts = sorted((p[cost], p[error_key]) for p in points)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(labels.get(cost, cost))
        ax.set_ylabel(error_label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def lmkan_backend_name() -> str:
    """Which implementation runs the lmKAN op on CPU float32 here ('cpu' native kernel or 'reference')."""
    from lmkan_surgery.ops import dispatch

    x, table = torch.zeros(1, 2), torch.zeros(1, 4, 4, 1)
    return dispatch.backend_for(x, table).name


class ModelStore:
    """Trained models and their metrics under <out>/models, so that --retime re-measures inference time (e.g. on a
    quiet machine) without retraining, and a config extended by more widths trains only the new models."""

    def __init__(self, out_dir: Path, retime: bool) -> None:
        self.folder = out_dir / "models"
        self.retime = retime

    def _path(self, label: str) -> Path:
        slug = "".join(c if c.isalnum() else "_" for c in label)
        return self.folder / f"{slug}.pt"

    def load(self, label: str) -> tuple[nn.Module, dict] | None:
        """The stored (model, row) of a label when retiming, else None."""
        path = self._path(label)
        if not (self.retime and path.exists()):
            return None
        saved = torch.load(path, weights_only=False)
        return saved["model"], saved["row"]

    def save(self, label: str, model: nn.Module, row: dict) -> None:
        """Keep a trained model and its row."""
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model, "row": row}, self._path(label))


def train_and_measure(label: str, build: Callable[[], nn.Module], train_data: object, cfg: TrainConfig,
                      evaluate: Callable[[nn.Module], dict], example: torch.Tensor, args: argparse.Namespace,
                      store: ModelStore) -> dict:
    """Train one model with `train_lmkan` (or reuse the stored one when retiming), then record its cost (params,
    FLOPs, CPU time per sample with args.timing_threads threads) and evaluate(model)'s metrics."""
    cached = store.load(label)
    if cached is not None:  # re-evaluated, so metrics added since the model was trained are filled in
        model, row = cached
        row.update(evaluate(model))
    else:
        seed_all(args.seed)
        model = build()
        start = time.perf_counter()
        result = train_lmkan(model, train_data, None, cfg)
        model.eval()
        row = {
            "label": label,
            "params": count_parameters(model),
            "flops": model_flops(model, example),
            "train_seconds": round(time.perf_counter() - start, 1),
            "final_train_loss": result.history[-1].terms["label"],
        }
        row.update(evaluate(model))
        store.save(label, model, row)
    row = dict(row, seconds_per_sample=seconds_per_sample(model, example, threads=args.timing_threads),
               timing_threads=args.timing_threads)
    print(json.dumps(row), flush=True)
    return row


def output_dir(args: argparse.Namespace, name: str) -> Path:
    """--out, or experiments/<name>/out/<mode>."""
    return args.out or Path(__file__).resolve().parent / name / "out" / mode_of(args)
