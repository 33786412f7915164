"""Acceptance benchmark of issue 14: at 0.5x, 0.25x, 0.1x, 0.05x of a teacher's formula MACs, the planner's arm
(keep / narrow / lmKAN consumer / lmKAN block per hidden width), the prune-only arm (the same planner, plain
narrowing only) and int8 dynamic quantization of the teacher, side by side; trainable arms distilled with the same
budget; metric, MACs, bytes, latency at batch 1 and 256 (measured alternately in one run), distillation wall time.
With --latency F every budget also caps the planned layers' batch-256 time (per-shape table) at F x the teacher's.

Teachers: the Fashion-MNIST CNN of tools/bench_distill.py and the two methane MLP teachers of
tools/bench_students.py (distances/SiLU, smooth; symmetry functions/CELU, heavy-tailed). One torch thread.

    python tools/bench_compress.py --docs docs/benchmarks.md --plots docs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "experiments" / "methane"), str(ROOT / "experiments")]

from bench_distill import train_teacher  # noqa: E402
from bench_students import distances, mlp, symmetry_functions  # noqa: E402
from ch4_data import load_or_generate  # noqa: E402
from common import cache_dir  # noqa: E402

from lmkan_surgery import ConfigError  # noqa: E402
from lmkan_surgery.data import load_fashion_mnist  # noqa: E402
from lmkan_surgery.distill import DistillConfig, TrainConfig, distill, evaluate, train_lmkan  # noqa: E402
from lmkan_surgery.planning import Budget, compare_arms, int8_dynamic, plan  # noqa: E402

Pair = tuple[torch.Tensor, torch.Tensor]


def fashion_teacher(args: argparse.Namespace) -> tuple[nn.Module, Pair, Pair, str]:
    """bench_distill's CNN trained (cached) on Fashion-MNIST; train/val pairs cut to the requested sizes."""
    x, y = load_fashion_mnist("train", as_dataset=False)
    xt, yt = load_fashion_mnist("test", as_dataset=False)
    cache = cache_dir("compress") / f"fashion_cnn_e{args.teacher_epochs}.pt"
    teacher, _ = train_teacher(TensorDataset(x, y), TensorDataset(xt, yt), args.teacher_epochs, 256, str(cache))
    return teacher, (x[:args.train_samples], y[:args.train_samples]), (xt[:args.val_samples], yt[:args.val_samples]), \
        "classification"


def methane_teacher(name: str, args: argparse.Namespace) -> tuple[nn.Module, Pair, Pair, str]:
    """bench_students' MLP teacher on distances (SiLU) or symmetry functions (CELU); distilled and validated on its
    own outputs (RMSE in units of the energy's standard deviation)."""
    positions, energies = load_or_generate(20000, 0, cache_dir("methane"), 1)
    pos, energy = torch.tensor(positions, dtype=torch.float64), torch.tensor(energies, dtype=torch.float64)
    keep = energy <= torch.quantile(energy, 0.98)
    pos, energy = pos[keep], energy[keep]
    target = ((energy - energy.mean()) / energy.std()).float().unsqueeze(1)
    feats = (distances if name == "distances" else symmetry_functions)(pos).float()
    n_train = int(0.8 * len(feats))
    x_tr, x_va = feats[:n_train], feats[n_train:]
    stats = (x_tr.mean(0), x_tr.std(0).clamp_min(1e-12))
    torch.manual_seed(0)
    teacher = mlp(feats.shape[1], 128, nn.SiLU if name == "distances" else nn.CELU, stats, norm=False)
    cache = cache_dir("compress") / f"{name}_mlp_e{args.teacher_epochs}.pt"
    if cache.exists():
        teacher.load_state_dict(torch.load(cache, weights_only=True))
    else:
        cfg = TrainConfig(epochs=args.teacher_epochs, batch_size=256, lr=2e-3, task="regression", hessian_start=0.0,
                          progress=False)
        train_lmkan(teacher, (x_tr, target[:n_train]), (x_va, target[n_train:]), cfg)
        torch.save(teacher.state_dict(), cache)
    teacher.eval().requires_grad_(False)
    with torch.no_grad():
        y_tr, y_va = teacher(x_tr), teacher(x_va)
    return teacher, (x_tr[:args.train_samples], y_tr[:args.train_samples]), (x_va[:args.val_samples],
                                                                              y_va[:args.val_samples]), "regression"


def run_budget(teacher: nn.Module, train: Pair, val: Pair, task: str, fraction: float,
               args: argparse.Namespace) -> dict:
    """One budget: plan both arms (or say why not), distill them alike, compare with int8 and the original."""
    calibration = list(train[0][:args.calibration].split(256))
    arms, notes, unmet, plans = {"original": teacher}, {}, {}, {}
    budget = Budget(macs=fraction, latency=args.latency)
    for name, lmkan in (("planner", True), ("prune-only", False)):
        try:
            result = plan(teacher, calibration, budget, example_inputs=(train[0][:1],), lmkan=lmkan)
        except ConfigError as err:
            unmet[name] = str(err)
            continue
        arms[name] = result.model
        notes[name] = f"{len(result.lmkan_layers())} lmKAN; " + "; ".join(d.choice for d in result.decisions)
        plans[name] = {"heldout": result.heldout.get("rel_error"), "rival": result.rival.get("rel_error"),
                       "kept_plain": result.kept_plain}
        print(result, flush=True)
    arms["int8"] = int8_dynamic(teacher)
    notes["int8"] = "quantize_dynamic (Linear); MACs unchanged"

    def train_arm(student: nn.Module) -> None:
        cfg = DistillConfig(epochs=args.epochs, batch_size=256, task=task, progress=False)
        distill(student, teacher, train, None, config=cfg)

    metric_name = "accuracy" if task == "classification" else "RMSE (vs teacher, std units)"
    table = compare_arms(arms, (train[0][:1],), lambda m: evaluate(m, val, task=task, device="cpu"), metric_name,
                         task == "classification", train=train_arm,
                         trainable=tuple(n for n in ("planner", "prune-only") if n in arms),
                         notes=notes, throughput_batch=256, repeats=10, budget_s=1.0, budget=budget.describe())
    print(table, flush=True)
    return {"budget": fraction, "unmet": unmet, "plans": plans, "table": table.render(markdown=True),
            "rows": [dict(vars(r), latency={str(k): v for k, v in r.latency.items()}) for r in table.rows]}


def plot(results: list[dict], folder: Path) -> list[Path]:
    """Per teacher: metric vs MACs ratio and vs latency at batch 256, one series per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for teacher in results:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for arm, marker in (("planner", "o-"), ("prune-only", "s--"), ("int8", "^:"), ("original", "k*")):
            points = [(r["macs"] / b["rows"][0]["macs"], r["latency"]["256"] * 1e3, r["metric"])
                      for b in teacher["budgets"] for r in b["rows"] if r["name"] == arm]
            if points:
                axes[0].plot([p[0] for p in points], [p[2] for p in points], marker, label=arm)
                axes[1].plot([p[1] for p in points], [p[2] for p in points], marker, label=arm)
        axes[0].set_xscale("log")
        axes[0].set_xlabel("formula MACs / teacher")
        axes[1].set_xlabel("latency at batch 256, ms (CPU, 1 thread)")
        for ax in axes:
            ax.set_ylabel(teacher["metric"])
            ax.legend()
        fig.suptitle(f"bench_compress: {teacher['teacher']}")
        fig.tight_layout()
        path = folder / f"bench_compress_{teacher['teacher']}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05])
    p.add_argument("--teachers", nargs="+", default=["fashion-cnn", "distances", "symmetry"])
    p.add_argument("--epochs", type=int, default=1, help="distillation epochs of every trainable arm")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--train-samples", type=int, default=8192, help="distillation (transfer) set size")
    p.add_argument("--val-samples", type=int, default=2000)
    p.add_argument("--calibration", type=int, default=2048, help="planner calibration rows (batches of 256)")
    p.add_argument("--latency", type=float, default=None,
                   help="also cap the planned layers' batch-256 latency at this fraction of the teacher's")
    p.add_argument("--json", type=Path)
    p.add_argument("--docs", type=Path, help="append a markdown section here")
    p.add_argument("--plots", type=Path, help="folder for the PNG plots")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = []
    for name in args.teachers:
        teacher, train, val, task = fashion_teacher(args) if name == "fashion-cnn" else methane_teacher(name, args)
        budgets = [run_budget(teacher, train, val, task, f, args) for f in args.budgets]
        results.append({"teacher": name, "metric": "accuracy" if task == "classification" else "RMSE",
                        "budgets": budgets})
    wall = time.perf_counter() - started
    command = "python tools/bench_compress.py " + " ".join(argv if argv is not None else sys.argv[1:])
    head = [f"command: `{command}`", f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
            f"{platform.platform()}, {platform.processor() or 'cpu'}, 1 torch thread, shared 2-core box loaded by "
            f"other jobs; wall {wall / 60:.1f} min", ""]
    body = []
    for teacher in results:
        for b in teacher["budgets"]:
            body += [f"**{teacher['teacher']}, {b['budget']}x MACs**", ""]
            body += [f"- {arm} arm not built: {why}" for arm, why in b["unmet"].items()]
            body += [f"- {arm}: whole-model held-out calibration error {p['heldout']:.4g}"
                     + (f" (its {'lmKAN' if p['kept_plain'] else 'pruning-only'} rival plan: {p['rival']:.4g})"
                        if p["rival"] is not None else "") for arm, p in b["plans"].items()]
            body += [b["table"], ""]
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        body += [f"![{p.stem}]({p.name})" for p in plot(results, args.plots)]
    text = "\n".join(head + body)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "wall_s": wall}, indent=1))
    if args.docs:
        with args.docs.open("a") as f:
            f.write("\n## Compression that pays: planner vs prune-only vs int8 (tools/bench_compress.py)\n\n" + text
                    + "\n")
    return results


if __name__ == "__main__":
    main()
