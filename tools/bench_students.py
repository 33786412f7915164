"""Acceptance benchmark of issue 16: plain vs lmKAN students distilled from two methane MLP teachers.

Teachers (trained here on GFN2-xTB energies of random CH4 configurations, experiments/methane/ch4_data.py):
(a) the 10 interatomic distances -> SiLU MLP; (b) 32 heavy-tailed atom-centred symmetry functions (radial and
angular, exp(-eta r^2) and (1 + lambda cos)^zeta terms: point masses at ~0, long tails) -> CELU MLP. Each is distilled
(trained on its outputs) into plain MLP students (Linear-BN-act), lmKAN students (quantile placement on the
first layer, BatchNorm + bounded identity placement on the others, the paper's linear/ReLU-first branches) and hybrid
students (the plain students' hidden layers, an lmKAN output layer) at fractions of its multiply-adds (lmKAN at 2x a
Linear of its shape), same budget, seeds side by side. Which of the two lmKAN kinds is "the lmKAN student" of a budget
is chosen on a held-out split of the transfer set (--select-holdout; neither lmKAN kind trains or refits on it), never
on the validation set that is the reported metric. The transfer
set is the teacher's training inputs plus --transfer unlabelled random configurations that the teacher labels
(distillation is not limited to the labelled set); after training, every kind gets a closed-form refit of its output
layer on it (least squares for the Linear, fit_tables for the lmKAN). Validation: the held-out labelled
configurations, RMSE against the teacher. Also: the train-step CPU time of each student (round-robin means), and the
shrink pass's held-out block error with the closed-form lmKAN fit vs the Linear refit.

    python tools/bench_students.py --docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "experiments" / "methane"), str(ROOT / "experiments")]

from ch4_data import load_or_generate, random_configurations  # noqa: E402
from common import cache_dir  # noqa: E402

from lmkan_surgery import LMKANConfig, LMKANLinear, fit_tables, lmkanify  # noqa: E402
from lmkan_surgery.distill import TrainConfig, train_lmkan  # noqa: E402
from lmkan_surgery.nn.placement import knot_values  # noqa: E402

HARTREE_KCAL = 627.509
CUTOFF = 6.0  # Angstrom
ETAS = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
ANGLES = ((1, 1.0), (1, -1.0), (4, 1.0), (4, -1.0), (16, 1.0), (16, -1.0), (64, 1.0), (64, -1.0))


class Standardize(nn.Module):
    """Fixed (x - mean) / std, the teachers' and plain students' input scaling."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def distances(pos: torch.Tensor) -> torch.Tensor:
    """The 10 interatomic distances of positions [N, 5, 3]."""
    rows, cols = torch.triu_indices(5, 5, 1)
    return torch.cdist(pos, pos)[:, rows, cols]


def symmetry_functions(pos: torch.Tensor) -> torch.Tensor:
    """[N, 32]: C-centred radial (8 eta, shifted to 1.1 A) and angular (8 zeta/lambda) terms, and the same for the
    H centres (mean over the four), Behler-Parrinello style with a cosine cutoff."""
    d = torch.cdist(pos, pos)
    eye = torch.eye(5, dtype=torch.bool)
    fc = torch.where(eye | (d >= CUTOFF), torch.zeros_like(d), 0.5 * (torch.cos(math.pi * d / CUTOFF) + 1))
    radial_c = torch.stack([(torch.exp(-eta * (d[:, 0, 1:] - 1.1) ** 2) * fc[:, 0, 1:]).sum(1) for eta in ETAS], 1)
    hh = fc[:, 1:, 1:]
    radial_h = torch.stack([(torch.exp(-eta * d[:, 1:, 1:] ** 2) * hh).sum((1, 2)) / 4 for eta in ETAS], 1)
    vec = pos.unsqueeze(2) - pos.unsqueeze(1)  # [N, i, j, 3] = r_i - r_j
    cos = torch.einsum("nijc,nikc->nijk", vec, vec) / (d.unsqueeze(3) * d.unsqueeze(2)).clamp_min(1e-9)
    weight = torch.exp(-0.3 * (d.unsqueeze(3) ** 2 + d.unsqueeze(2) ** 2 + d.unsqueeze(1) ** 2))
    weight = weight * fc.unsqueeze(3) * fc.unsqueeze(2) * fc.unsqueeze(1)
    upper = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)  # j < k
    angular = []
    for zeta, lam in ANGLES:
        term = 2.0 ** (1 - zeta) * (1 + lam * cos).clamp_min(0) ** zeta * weight * upper
        angular.append((term[:, 0].sum((1, 2)), term[:, 1:].sum((1, 2, 3)) / 4))
    return torch.cat([radial_c, torch.stack([a for a, _ in angular], 1), radial_h,
                      torch.stack([b for _, b in angular], 1)], 1)


def mlp(d_in: int, width: int, act: type[nn.Module], stats: tuple[torch.Tensor, torch.Tensor],
        norm: bool) -> nn.Sequential:
    """Standardize -> Linear -> [BN] -> act -> Linear -> [BN] -> act -> Linear."""
    bn = (lambda: nn.BatchNorm1d(width)) if norm else nn.Identity
    return nn.Sequential(Standardize(*stats), nn.Linear(d_in, width), bn(), act(), nn.Linear(width, width), bn(),
                         act(), nn.Linear(width, 1))


def lmkan_student(d_in: int, width: int, num_grids: int, x_train: torch.Tensor, mix: float) -> nn.Sequential:
    """lmKAN -> BN -> clamp -> lmKAN -> BN -> clamp -> lmKAN; the first layer placed by its inputs' quantiles, the
    others by BatchNorm(affine=False) and a clamp to the grid plus one cell (what an uncalibrated quantile placement
    computes, as one op: no extrapolation blow-up)."""
    edge = float(knot_values(num_grids)[-1])
    model = nn.Sequential(
        LMKANLinear(d_in, width, num_grids, bias=False, input_norm="quantile", preconditioning="linear"),
        nn.BatchNorm1d(width, affine=False), nn.Hardtanh(-edge, edge),
        LMKANLinear(width, width, num_grids, bias=False, preconditioning="relu_first"),
        nn.BatchNorm1d(width, affine=False), nn.Hardtanh(-edge, edge),
        LMKANLinear(width, 1, num_grids, preconditioning="relu_first"))
    model[0].calibrate_placement(x_train, mix=mix)
    return model


def hybrid_student(d_in: int, width: int, num_grids: int, act: type[nn.Module],
                   stats: tuple[torch.Tensor, torch.Tensor]) -> nn.Sequential:
    """The plain student's hidden layers (Linear-BN-act x2), then BN -> clamp -> lmKAN output layer: lmKAN only
    where its 2-D capacity is cheap and fitted in closed form (the output refit), plain layers where width pays."""
    edge = float(knot_values(num_grids)[-1])
    body = list(mlp(d_in, width, act, stats, norm=True))[:-1]
    return nn.Sequential(*body, nn.BatchNorm1d(width, affine=False), nn.Hardtanh(-edge, edge),
                         LMKANLinear(width, 1, num_grids, preconditioning="relu_first"))


KINDS = ("plain", "lmkan", "hybrid")
LMKAN_KINDS = ("lmkan", "hybrid")


def macs(d_in: int, width: int, kind: str) -> int:
    """Multiply-adds per sample of the 3-layer topology of a student kind (an lmKAN layer counts 2x its Linear)."""
    per_layer = {"plain": (1, 1, 1), "lmkan": (2, 2, 2), "hybrid": (1, 1, 2)}[kind]
    return sum(f * n for f, n in zip(per_layer, (d_in * width, width * width, width)))


def width_for(d_in: int, budget: int, kind: str) -> int:
    """The largest width whose MACs stay within budget (at least 2)."""
    width = 2
    while macs(d_in, width + 1, kind) <= budget:
        width += 1
    return width


def build_student(kind: str, d_in: int, width: int, act: type[nn.Module], stats: tuple[torch.Tensor, torch.Tensor],
                  x_fit: torch.Tensor, args: argparse.Namespace) -> nn.Sequential:
    """A fresh student of one kind (x_fit calibrates the all-lmKAN student's first-layer placement)."""
    if kind == "plain":
        return mlp(d_in, width, act, stats, norm=True)
    if kind == "lmkan":
        return lmkan_student(d_in, width, args.num_grids, x_fit, args.placement_mix)
    return hybrid_student(d_in, width, args.num_grids, act, stats)


def train_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """One budget for every student: AdamW (the same weight decay for both kinds), cosine in the second half,
    loss-scaled Hessian weight (lmKAN only) off at half."""
    half = args.epochs / 2
    return TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, task="regression", seed=seed,
                       weight_decay=args.weight_decay,
                       hessian_start=args.hessian, hessian_relative=True, hessian_decay_epochs=half / 4,
                       hessian_off_epoch=half, gamma_ramp_epochs=1.0, hessian_every=args.hessian_every,
                       progress=False)


def diverged(curve: list[float]) -> bool:
    """Non-finite, or (after the first epoch) above 2x the best validation RMSE before it."""
    return (not all(math.isfinite(v) for v in curve)
            or any(curve[i] > 2 * min(curve[:i]) for i in range(1, len(curve))))


def step_times(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
               steps: int) -> dict[str, float]:
    """Mean CPU seconds per train step of the engine itself (train_lmkan: forward, MSE, backward, the Hessian
    gradient where on, clipping, AdamW), from the gaps between on_step_end calls of short runs, round-robin; the
    lmKAN students with the Hessian term (its loss-scaled start weight) every step, every 4th step, every
    --hessian-every steps (the recipe's) and off. Thread CPU time, not wall time: on a shared box a step's wall time
    mostly measures when the scheduler preempts it; the mean spreads a term evaluated every k-th step."""
    variants = {}
    for name, model in models.items():
        variants[name] = (model, args.hessian, 1)
        if any(isinstance(m, LMKANLinear) for m in model.modules()):
            for every in sorted({4, args.hessian_every} - {1}):
                variants[_every_key(name, every)] = (model, args.hessian, every)
            variants[f"{name} (no Hessian term)"] = (model, 0.0, 1)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    data = (x[:(steps + 1) * args.batch], y[:(steps + 1) * args.batch])
    for _ in range(args.rounds):
        for name, (model, hessian, every) in variants.items():
            stamps: list[float] = []
            cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=1e-4, task="regression", hessian_start=hessian,
                              hessian_relative=True, hessian_decay_epochs=1e9, hessian_every=every,
                              gamma_target=None, progress=False)
            train_lmkan(copy.deepcopy(model), data, None, cfg, on_step_end=lambda _: stamps.append(time.thread_time()))
            samples[name] += [b - a for a, b in zip(stamps, stamps[1:])]  # the first step (optimizer set-up) left out
    return {name: statistics.fmean(v) for name, v in samples.items()}


def block_fits(teacher: nn.Module, x: torch.Tensor, num_grids: int) -> dict[str, float]:
    """lmkanify(mode='shrink', width 0.5) of the teacher with the lmKAN fit and with the Linear refit only."""
    calibration = list(x[:4096].split(512))
    out = {}
    for fit in ("lmkan", "linear"):
        config = LMKANConfig(num_grids=num_grids, mode="shrink", width=0.5, input_norm="quantile",
                             skip_defaults=False, shrink_fit=fit)
        _, report = lmkanify(teacher, config, example_inputs=x[:4], calibration=calibration)
        out[f"model_heldout_rel_error_{fit}"] = report.validation["heldout_rel_error"]
        out.update({k.removeprefix("heldout_"): v for k, v in report.validation.items() if "block" in k})
    return out


def rmse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Root-mean-square error of model(x) against y (eval mode)."""
    model.eval()
    with torch.no_grad():
        return float(((model(x) - y) ** 2).mean().sqrt())


def refit_output_layer(student: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> None:
    """Closed-form refit of the last layer on (x, teacher outputs): ridge least squares for a Linear, fit_tables
    (relative ridge 1e-4, Hessian 1e-3) for an lmKAN layer, whose ReLU-first branch is folded first."""
    student.eval()
    captured = []
    handle = student[-1].register_forward_pre_hook(lambda mod, a: captured.append(a[0]))
    with torch.no_grad():
        student(x)
    handle.remove()
    last, features = student[-1], captured[0]
    if isinstance(last, LMKANLinear):
        last.fold()
        fit_tables(last, features, y, hessian=1e-3, ridge=1e-4, relative=True)
        return
    design = torch.cat([features, torch.ones(len(features), 1)], 1).double()
    gram = design.t() @ design
    gram += 1e-8 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    solution = torch.linalg.solve(gram, design.t() @ y.double())
    with torch.no_grad():
        last.weight.copy_(solution[:-1].t())
        last.bias.copy_(solution[-1])


def select_lmkan(rows: list[dict]) -> dict[float, str]:
    """Per budget, the lmKAN kind with the lower mean RMSE on the transfer set's held-out selection split."""
    choice = {}
    for fraction in {r["budget"] for r in rows}:
        means = {kind: statistics.fmean(r["select_rmse"] for r in rows if r["budget"] == fraction and r["kind"] == kind)
                 for kind in LMKAN_KINDS if any(r["budget"] == fraction and r["kind"] == kind for r in rows)}
        if means:
            choice[fraction] = min(means, key=means.get)
    return choice


def run_teacher(name: str, feats: torch.Tensor, energies: torch.Tensor, act: type[nn.Module], extra: torch.Tensor,
                args: argparse.Namespace, log) -> dict:
    """Train the teacher, then every student at every budget and seed; the rows of one table. The plain students
    train and refit on the whole transfer set; the lmKAN kinds on all but its last --select-holdout share of the
    unlabelled configurations, which picks between them."""
    n_train = int(0.8 * len(feats))
    x_tr, x_va = feats[:n_train], feats[n_train:]
    stats = (x_tr.mean(0), x_tr.std(0).clamp_min(1e-12))
    torch.manual_seed(0)
    teacher = mlp(feats.shape[1], args.teacher_width, act, stats, norm=False)
    started = time.perf_counter()
    cfg = TrainConfig(epochs=args.teacher_epochs, batch_size=args.batch, lr=args.lr, task="regression",
                      hessian_start=0.0, progress=False)
    fit = train_lmkan(teacher, (x_tr, energies[:n_train]), (x_va, energies[n_train:]), cfg)
    teacher.eval().requires_grad_(False)
    x_tr = torch.cat([x_tr, extra])
    with torch.no_grad():
        y_tr, y_va = teacher(x_tr), teacher(x_va)
    total = macs(feats.shape[1], args.teacher_width, "plain")
    held = int(args.select_holdout * len(extra))
    x_fit, y_fit, x_sel, y_sel = x_tr[:len(x_tr) - held], y_tr[:len(x_tr) - held], x_tr[len(x_tr) - held:], \
        y_tr[len(x_tr) - held:]
    quant = torch.quantile(((x_tr - stats[0]) / stats[1]).abs().flatten()[::7], torch.tensor([0.99, 1.0]))
    result = {"teacher": name, "features": feats.shape[1], "teacher_macs": total,
              "teacher_val_rmse": fit.final_val_metric, "teacher_train_s": round(time.perf_counter() - started, 1),
              "input_abs_sigma_p99_max": [round(float(v), 1) for v in quant], "rows": [], "timing": {}}
    log(f"[{name}] teacher val RMSE {fit.final_val_metric:.4f} (std units), p99/max |x| in sigma {quant.tolist()}")
    for fraction in args.budgets:
        budget = int(fraction * total)
        widths = {kind: width_for(feats.shape[1], budget, kind) for kind in args.arms}
        timing_models = {}
        for seed in args.seeds:
            for kind, width in widths.items():
                x_kind, y_kind = (x_tr, y_tr) if kind == "plain" else (x_fit, y_fit)
                torch.manual_seed(seed)
                student = build_student(kind, feats.shape[1], width, act, stats, x_kind, args)
                started = time.perf_counter()
                history = train_lmkan(student, (x_kind, y_kind), (x_va, y_va), train_config(args, seed)).history
                curve = [r.val_metric for r in history]
                trained = copy.deepcopy(student)
                refit_output_layer(student, x_kind, y_kind)
                row = {"budget": fraction, "kind": kind, "width": width, "seed": seed,
                       "macs": macs(feats.shape[1], width, kind), "val_rmse": rmse(student, x_va, y_va),
                       "val_rmse_before_refit": curve[-1],
                       "best_rmse": min(curve), "diverged": diverged(curve), "curve": [round(v, 5) for v in curve],
                       "train_s": round(time.perf_counter() - started, 1)}
                if kind != "plain" and held:
                    row["select_rmse"] = rmse(student, x_sel, y_sel)
                result["rows"].append(row)
                log(f"[{name}] {fraction}x {kind} h={width} seed={seed}: val RMSE {row['val_rmse']:.4f} after the "
                    f"output refit, {curve[-1]:.4f} before (best {min(curve):.4f}, diverged={row['diverged']}) "
                    f"{row['train_s']} s")
                timing_models[kind] = trained
        sample = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(1))[:11 * args.batch]
        result["timing"][str(fraction)] = step_times(timing_models, x_tr[sample], y_tr[sample], args, 10)
    if held:
        result["selected"] = {str(k): v for k, v in select_lmkan(result["rows"]).items()}
    result["block_fit"] = block_fits(teacher, x_tr, args.num_grids)
    log(f"[{name}] block fit: {result['block_fit']}")
    return result


def timing_only(feats: torch.Tensor, act: type[nn.Module], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """step_times of freshly built students at every budget, no training (a step's cost does not depend on the
    weights): the timing alone, rerun in a minute when the box is quieter than during the full run."""
    d_in, total = feats.shape[1], macs(feats.shape[1], args.teacher_width, "plain")
    stats = (feats.mean(0), feats.std(0).clamp_min(1e-12))
    sample = torch.randperm(len(feats), generator=torch.Generator().manual_seed(1))[:11 * args.batch]
    x, y = feats[sample], torch.randn(len(sample), 1, generator=torch.Generator().manual_seed(2))
    out = {}
    for fraction in args.budgets:
        torch.manual_seed(0)
        models = {kind: build_student(kind, d_in, width_for(d_in, int(fraction * total), kind), act, stats, feats, args)
                  for kind in args.arms}
        out[str(fraction)] = step_times(models, x, y, args, 10)
    return out


def _every_key(kind: str, every: int) -> str:
    """The timing entry of a kind with the Hessian term every `every` steps."""
    return kind if every == 1 else f"{kind} (Hessian every {every}th step)"


def timing_ratios(timing: dict[str, float], kind: str, every: int) -> str:
    """'every / 4th / none / recipe': a kind's step CPU time over the plain student's with the Hessian term every
    step, every 4th, off, and over the recipe (term every `every` steps for the first half of the run, then off)."""
    keys = (kind, _every_key(kind, 4), f"{kind} (no Hessian term)")
    if not all(k in timing for k in keys):
        return "-"
    recipe = (timing[_every_key(kind, every)] + timing[keys[2]]) / 2
    return " / ".join(f"{t / timing['plain']:.2f}" for t in [timing[k] for k in keys] + [recipe])


def summary(result: dict, std_kcal: float, every: int) -> list[str]:
    """Markdown rows: per budget, each kind's RMSE (kcal/mol, seeds), its ratio to plain after (before) the output
    refit, the lmKAN kind chosen on the held-out transfer split, divergences and step-time ratios."""
    lines = []
    for fraction in sorted({r["budget"] for r in result["rows"]}, reverse=True):
        rows = {kind: [r for r in result["rows"] if r["budget"] == fraction and r["kind"] == kind] for kind in KINDS}
        mean = lambda kind, key="val_rmse": statistics.fmean(r[key] for r in rows[kind])  # noqa: E731

        def ratio(kind: str) -> str:
            if not rows[kind]:
                return "-"
            before = mean(kind, "val_rmse_before_refit") / mean("plain", "val_rmse_before_refit")
            return f"{mean(kind) / mean('plain'):.2f} ({before:.2f})"

        pick = result.get("selected", {}).get(str(fraction))
        cells = [result["teacher"], f"{fraction}x",
                 " / ".join(str(rows[k][0]["width"]) if rows[k] else "-" for k in KINDS)]
        cells += [" / ".join(f"{r['val_rmse'] * std_kcal:.3f}" for r in rows[k]) or "-" for k in KINDS]
        cells += [ratio("lmkan"), ratio("hybrid"), f"{pick}: {mean(pick) / mean('plain'):.2f}" if pick else "-",
                  " / ".join(str(sum(r["diverged"] for r in rows[k])) if rows[k] else "-" for k in LMKAN_KINDS)]
        cells += [timing_ratios(result["timing"][str(fraction)], k, every) for k in LMKAN_KINDS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=20000, help="labelled CH4 configurations (cached)")
    p.add_argument("--transfer", type=int, default=136000, help="extra unlabelled configurations the teacher labels")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--teacher-width", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay, every student")
    p.add_argument("--hessian", type=float, default=1e-3, help="relative Hessian weight at the start")
    p.add_argument("--hessian-every", type=int, default=4,
                   help="steps between Hessian-gradient evaluations in the recipe (4: within noise on accuracy, "
                        "docs/benchmarks.md)")
    p.add_argument("--num-grids", type=int, default=8)
    p.add_argument("--placement-mix", type=float, default=0.5,
                   help="first lmKAN layer's quantile placement: weight of the linear CDF in the blend")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rounds", type=int, default=5, help="round-robin timing rounds")
    p.add_argument("--teachers", nargs="+", default=["distances", "symmetry"], choices=["distances", "symmetry"])
    p.add_argument("--arms", nargs="+", default=list(KINDS), choices=KINDS,
                   help="student kinds (plain is the baseline of every ratio and always included)")
    p.add_argument("--select-holdout", type=float, default=0.05,
                   help="share of the unlabelled transfer configurations held out of the lmKAN kinds' training and "
                        "refit, to choose between them")
    p.add_argument("--timing-only", action="store_true", help="only the step times, of untrained students")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--docs", type=Path, help="append a markdown section here")
    args = p.parse_args(argv)
    args.arms = ["plain"] + [kind for kind in args.arms if kind != "plain"]
    torch.set_num_threads(1)
    started = time.perf_counter()
    log = lambda text: print(f"{time.perf_counter() - started:7.1f}s {text}", flush=True)  # noqa: E731
    positions, energies = load_or_generate(args.count, 0, cache_dir("methane"), 1)
    pos = torch.tensor(positions, dtype=torch.float64)
    energy = torch.tensor(energies, dtype=torch.float64)
    keep = energy <= torch.quantile(energy, 0.98)  # drop the 2% closest contacts (energies far off the scale)
    pos, energy = pos[keep], energy[keep]
    std = float(energy.std())
    target = ((energy - energy.mean()) / std).float().unsqueeze(1)
    extra = torch.tensor(random_configurations(args.transfer, 1), dtype=torch.float64)
    featurize = {"distances": distances, "symmetry": symmetry_functions}
    acts = {"distances": nn.SiLU, "symmetry": nn.CELU}
    if args.timing_only:
        timing = {name: timing_only(featurize[name](pos).float(), acts[name], args) for name in args.teachers}
        for name, per_budget in timing.items():
            for fraction, t in per_budget.items():
                print(f"{name} {fraction}x: step CPU time / plain, Hessian every step / every 4th / none / recipe "
                      f"(every {args.hessian_every} for half the run): "
                      + "; ".join(f"{k} {timing_ratios(t, k, args.hessian_every)}" for k in LMKAN_KINDS if k in t)
                      + f"; plain {t['plain'] * 1e3:.2f} ms")
        if args.json:
            args.json.write_text(json.dumps({"timing_only": timing, "date": datetime.now(timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"), "rounds": args.rounds}, indent=1))
        return timing
    results = {"command": "python tools/bench_students.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.platform(),
               "threads": 1, "configurations": int(keep.sum()), "target_std_kcal": std * HARTREE_KCAL,
               "teachers": [run_teacher(name, featurize[name](pos).float(), target, acts[name],
                                        featurize[name](extra).float(), args, log) for name in args.teachers]}
    results["wall_s"] = round(time.perf_counter() - started, 1)
    lines = ["| teacher | MACs | width plain / lmKAN / hybrid | plain RMSE kcal/mol (seeds) | lmKAN RMSE | hybrid RMSE | "
             "lmKAN / plain (before the output refit) | hybrid / plain (before) | held-out-selected lmKAN kind / plain "
             "| diverged lmKAN / hybrid | step CPU time lmKAN / plain: Hessian every step / every 4th / none / recipe | "
             "same, hybrid / plain |", "|" + "---|" * 12]
    for teacher in results["teachers"]:
        lines += summary(teacher, results["target_std_kcal"], args.hessian_every)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.docs:
        with args.docs.open("a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main()
