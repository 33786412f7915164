"""Recovery-training acceptance on Fashion-MNIST: CNN teacher -> shrink-converted lmKAN student -> distill.

Trains a small CNN teacher, converts it with lmkanify(mode='shrink') to <= --width of the teacher's FLOPs (a
hand-built narrower lmKAN student with --manual), distills, and prints the test accuracy of the teacher, the
converted student before distillation and after, the FLOP ratio and wall times. --docs appends a markdown section.

    python tools/bench_distill.py --docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from datetime import datetime, timezone

import torch
from torch import nn

from lmkan_surgery.data import load_fashion_mnist
from lmkan_surgery.distill import DistillConfig, TrainConfig, distill, evaluate, train_lmkan
from lmkan_surgery.nn import LMKANLayer, LMKANLinear
from lmkan_surgery.rules import rule_for


HEAD = ["9", "11"]  # the MLP head: most of the teacher's FLOPs, and the lmkanify shrink group


def make_teacher() -> nn.Sequential:
    """2 small conv blocks + a wide MLP head (28x28 -> 14x14x8 -> 7x7x16 -> 1024 -> 10): the head holds ~75% of
    the multiply-adds, so converting and narrowing it can reach <= 0.5x FLOPs with lmKAN's 2x per-edge cost."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 10),
    )


def formula_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds per sample by the layer rules' formula (the one the report uses: lmKAN layers count
    2 * even(N_in) * N_out per output position)."""
    total = [0]

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        rule = rule_for(module)
        if rule is None:
            return
        positions = rule.positions(tuple(args[0].shape), tuple(out.shape), 1)
        total[0] += positions * rule.macs_per_position(module, lmkan=isinstance(module, LMKANLayer))

    inside = {id(sub) for m in model.modules() if isinstance(m, LMKANLayer) for sub in m.modules() if sub is not m}
    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) not in inside]
    with torch.no_grad():
        was = model.training
        model.eval()
        model(example[:1])
        model.train(was)
    for h in handles:
        h.remove()
    return total[0]


def train_teacher(train, test, epochs: int, batch: int, cache: str | None) -> tuple[nn.Module, float]:
    """Plain supervised training of the CNN (train_lmkan with the Hessian/gamma terms off), or load it from cache."""
    teacher = make_teacher()
    if cache and os.path.isfile(cache):
        teacher.load_state_dict(torch.load(cache, weights_only=True))
        return teacher.eval(), evaluate(teacher, test)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=2e-3, weight_decay=1e-4, warmup=0.02, cosine_start=0.0,
                      hessian_start=0.0, gamma_target=None, seed=0)
    train_lmkan(teacher, train, test, cfg)
    if cache:
        torch.save(teacher.state_dict(), cache)
    return teacher.eval(), evaluate(teacher, test)


def lmkanify_student(teacher: nn.Module, train, args) -> tuple[nn.Module, str]:
    """Shrink-convert with lmkanify; returns the student and a one-line description."""
    from lmkan_surgery import LMKANConfig, lmkanify

    x = train.tensors[0]
    calib = [x[i:i + 256] for i in range(0, args.calibration, 256)]
    config = LMKANConfig(num_grids=args.num_grids, mode="shrink", width=args.width, include=HEAD, skip_defaults=False,
                         table_dtype=args.table_dtype)
    student, report = lmkanify(teacher, config=config, example_inputs=x[:8], calibration=calib)
    return student, (f"lmkanify(mode='shrink', width={args.width}, num_grids={args.num_grids}, "
                     f"table_dtype={args.table_dtype}): {report.converted_names()}")


def manual_student(teacher: nn.Module, args) -> tuple[nn.Module, str]:
    """Hand-built shrink of the head: fc1 and fc2 as lmKAN layers with a narrower hidden width (random init)."""
    student = copy.deepcopy(teacher)
    h = args.manual_hidden
    dtype = args.table_dtype
    student[9] = LMKANLinear(16 * 7 * 7, h, num_grids=args.num_grids, input_norm="batchnorm", table_dtype=dtype)
    student[11] = LMKANLinear(h, 10, num_grids=args.num_grids, input_norm="batchnorm", table_dtype=dtype)
    return student, (f"hand-built: fc1 -> LMKANLinear(784,{h}), fc2 -> LMKANLinear({h},10), random init, "
                     f"table_dtype={dtype}")


def table_bytes(model: nn.Module) -> int:
    """Bytes of the lmKAN tables' storage (the parameters a half table_dtype halves)."""
    return sum(m.table.numel() * m.table.element_size() for m in model.modules() if isinstance(m, LMKANLayer))


def command_line(args: argparse.Namespace, cached: bool) -> str:
    """The invocation, rebuilt from the parsed arguments (store_true flags as bare flags)."""
    parts = ["python tools/bench_distill.py"]
    skip = {"docs", "json"} | ({"teacher_epochs"} if cached else set())
    for key, value in vars(args).items():
        if value not in (None, False) and key not in skip:
            parts.append(f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}"))
    return " ".join(parts)


def docs_section(r: dict) -> str:
    """The markdown section for docs/benchmarks.md."""
    gap = r["teacher_acc"] - r["distilled_acc"]
    verdict = "met" if gap <= 0.01 else f"missed by {100 * (gap - 0.01):.2f} points"
    return f"""
## Recovery training (Fashion-MNIST)

`{r['command']}` on {r['date']}, {r['machine']} (load average at start {r['load']}).

| model | test accuracy | MACs/sample (formula) |
|---|---|---|
| CNN teacher ({r['teacher_source']}) | {100 * r['teacher_acc']:.2f}% | {r['teacher_macs']:,} |
| converted student, before distill | {100 * r['converted_acc']:.2f}% | {r['student_macs']:,} |
| distilled student ({r['distill_epochs']} epochs) | {100 * r['distilled_acc']:.2f}% | {r['student_macs']:,} |

- Student: {r['student']}; lmKAN table bytes {r['table_bytes']:,}.
- FLOP ratio student/teacher: {r['flop_ratio']:.3f} (multiply-adds, lmKAN layers at 2x a same-shape Linear, the
  paper's convention).
- Goal (distilled within 1.0 point of the teacher): {verdict} (gap {100 * gap:.2f} points).
- Wall time: teacher {r['teacher_s']:.0f} s, conversion {r['convert_s']:.0f} s, distill {r['distill_s']:.0f} s,
  whole script {r['total_s']:.0f} s.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--distill-epochs", type=int, default=3)
    parser.add_argument("--distill-samples", type=int, default=60000, help="training images used for distillation")
    parser.add_argument("--distill-lr", type=float, help="override DistillConfig's default learning rate")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-grids", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.45, help="target student/teacher FLOP ratio")
    parser.add_argument("--calibration", type=int, default=2048, help="calibration images for lmkanify")
    parser.add_argument("--manual", action="store_true", help="hand-built student instead of lmkanify")
    parser.add_argument("--manual-hidden", type=int, default=128)
    parser.add_argument("--table-dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="storage dtype of the student's lmKAN tables (default: the model's, float32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher-cache", help="load the teacher from this file if it exists, else save it there")
    parser.add_argument("--stop-after-teacher", action="store_true", help="only train (and cache) the teacher")
    parser.add_argument("--docs", help="append the markdown section to this file")
    parser.add_argument("--json", help="write the numbers as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load = os.getloadavg()[0]
    cached = bool(args.teacher_cache and os.path.isfile(args.teacher_cache))
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    teacher, teacher_acc = train_teacher(train, test, args.teacher_epochs, args.batch, args.teacher_cache)
    teacher_s = time.perf_counter() - start
    print(f"teacher test accuracy {teacher_acc:.4f} after {teacher_s:.0f} s", flush=True)
    if args.stop_after_teacher:
        return

    t0 = time.perf_counter()
    student, description = manual_student(teacher, args) if args.manual else lmkanify_student(teacher, train, args)
    convert_s = time.perf_counter() - t0
    example = test.tensors[0][:1]
    teacher_macs, student_macs = formula_macs(teacher, example), formula_macs(student, example)
    converted_acc = evaluate(student, test)
    print(f"{description}\nconverted accuracy {converted_acc:.4f}, MAC ratio {student_macs / teacher_macs:.3f}",
          flush=True)

    t0 = time.perf_counter()
    subset = torch.utils.data.TensorDataset(*(t[:args.distill_samples] for t in train.tensors))
    overrides = {"lr": args.distill_lr} if args.distill_lr else {}
    distill(student, teacher, subset, test,
            DistillConfig(epochs=args.distill_epochs, batch_size=args.batch, **overrides))
    distill_s = time.perf_counter() - t0
    result = {
        "command": command_line(args, cached),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load": f"{load:.1f}",
        "teacher_source": f"loaded from {args.teacher_cache}" if cached else f"{args.teacher_epochs} epochs",
        "distill_epochs": args.distill_epochs,
        "teacher_acc": teacher_acc, "converted_acc": converted_acc, "distilled_acc": evaluate(student, test),
        "teacher_macs": teacher_macs, "student_macs": student_macs, "flop_ratio": student_macs / teacher_macs,
        "student": description, "table_bytes": table_bytes(student), "teacher_s": teacher_s, "convert_s": convert_s, "distill_s": distill_s,
        "total_s": time.perf_counter() - start,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.docs:
        with open(args.docs, "a") as f:
            f.write(docs_section(result))


if __name__ == "__main__":
    main()
