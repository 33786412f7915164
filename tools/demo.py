"""`make demo`: the main job end to end on Fashion-MNIST, in a few minutes on a 2-core CPU.

Train a small CNN teacher briefly, convert it exactly (and show the student computes the same function), plan it to
half its MACs and set the planner's arm beside the prune-only and int8 arms (each trainable arm distilled alike),
print the FLOP/parameter/latency report, export the planned student to ONNX and check it in onnxruntime. A piece
that is unavailable prints one clear line and the rest still runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lmkan_surgery.convert import Progress

ROOT = Path(__file__).resolve().parents[1]
Pair = tuple[torch.Tensor, torch.Tensor]


def teacher_cnn() -> nn.Module:
    """The small Fashion-MNIST CNN: a strided stem, three hidden convs, a hidden Linear and the classifier head.

    Conv -> (BatchNorm) -> ReLU -> Conv chains are hidden widths the shrink pass can narrow.
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(32 * 9, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def load_data(train_samples: int, test_samples: int) -> tuple[Pair, Pair]:
    """Fashion-MNIST (normalised, [N, 1, 28, 28]) through the project's offline loader."""
    from lmkan_surgery.data import load_fashion_mnist

    x, y = load_fashion_mnist("train", as_dataset=False)
    xt, yt = load_fashion_mnist("test", as_dataset=False)
    return (x[:train_samples], y[:train_samples]), (xt[:test_samples], yt[:test_samples])


def train_teacher(model: nn.Module, train: Pair, epochs: int, batch: int = 64) -> None:
    """Plain Adam training with labels (a brief run: the demo is about conversion, not SOTA accuracy)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train[0]))
        for idx in order.split(batch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(train[0][idx]), train[1][idx]).backward()
            optimizer.step()
    model.eval()


def accuracy(model: nn.Module, data: Pair) -> float:
    """Top-1 accuracy through the distillation package's evaluator."""
    from lmkan_surgery.distill import evaluate

    return evaluate(model, data, batch_size=256)


def attempt(label: str, failures: list[str], fn: Callable[[], Any]) -> Any:
    """Run one piece; a missing feature or an error prints one line, is remembered, and returns None."""
    try:
        return fn()
    except ImportError as err:
        line = f"  SKIPPED {label}: not available in this build ({err})"
    except Exception as err:  # the demo goes on with the other pieces
        line = f"  FAILED {label}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    print(line, flush=True)
    failures.append(line.strip())
    return None


def convert(teacher: nn.Module, train: Pair, mode: str, calibration_batches: int = 8) -> tuple[nn.Module, Any]:
    """lmkanify the teacher in `mode` with calibration batches from the training set."""
    from lmkan_surgery import LMKANConfig, lmkanify

    calibration = list(train[0][: 64 * calibration_batches].split(64))
    config = LMKANConfig(num_grids=8, mode=mode, width=0.5, width_mode="channels")
    return lmkanify(teacher, config=config, example_inputs=(train[0][:1],), calibration=calibration)


def exact_step(teacher: nn.Module, train: Pair, test: Pair) -> None:
    """Exact conversion: same function; print the agreement with the teacher."""
    student, report = convert(teacher, train, "exact")
    print(report)
    with torch.no_grad():
        a, b = teacher(test[0][:512]), student(test[0][:512])
    rel = float((a - b).abs().max() / a.abs().max())
    agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    print(f"  exact student vs teacher on 512 test images: max relative difference {rel:.2e}, "
          f"top-1 agreement {agree:.1%}, accuracy {accuracy(student, test):.2%}")


def arms_step(teacher: nn.Module, train: Pair, test: Pair, epochs: int, samples: int, out: Path) -> nn.Module:
    """Plan to 0.5x MACs; planner, prune-only and int8 arms side by side (trainable arms distilled for the same
    epochs on the same images); saves and returns the planner's student."""
    from lmkan_surgery import LMKANConfig, save
    from lmkan_surgery.convert_arms import run_arms

    calibration = list(train[0][:512].split(64))
    config = LMKANConfig(mode="budget", budget_macs=0.5, input_norm="quantile")
    subset = (train[0][:samples], train[1][:samples])
    planned, _ = run_arms(teacher, calibration, test[0][:1], subset, test, config, epochs, 128, 256, 10, 2.0, out)
    save(planned.model, out / "student.pt")
    return planned.model


def report_step(teacher: nn.Module, student: nn.Module, test: Pair, out: Path) -> None:
    """FLOPs (fvcore, lmKAN handle), parameters and measured latency; saved next to the other outputs."""
    from lmkan_surgery.report import compare

    report = compare(teacher, student, (test[0][:1],), batch_sizes=(1, 256), repeats=10)
    print(report)
    report.save(out)


def onnx_step(student: nn.Module, test: Pair, out: Path) -> None:
    """Export with validation, then classify the test images in onnxruntime and compare with PyTorch."""
    from lmkan_surgery.onnx import export_onnx, session

    result = export_onnx(student, out / "student.onnx", (test[0][:1],), validate=True)
    print(result)
    ort = session(out / "student.onnx")
    name = ort.get_inputs()[0].name
    logits = torch.cat([torch.from_numpy(ort.run(None, {name: x.numpy()})[0]) for x in test[0].split(256)])
    with torch.no_grad():
        same = float((logits.argmax(-1) == student(test[0]).argmax(-1)).float().mean())
    acc = float((logits.argmax(-1) == test[1]).float().mean())
    print(f"  onnxruntime ({getattr(ort, 'lmkan_path', 'onnxruntime')}): accuracy {acc:.2%} on {len(test[0])} test "
          f"images, top-1 agreement with PyTorch {same:.1%}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit code 1 when a piece failed or was unavailable."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo", help="output folder")
    parser.add_argument("--train-samples", type=int, default=6000, help="teacher training images")
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--distill-samples", type=int, default=2048, help="images the student distills on")
    parser.add_argument("--distill-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    progress = Progress(6)
    progress(f"data: Fashion-MNIST, {args.train_samples} train / {args.test_samples} test images")
    data = attempt("Fashion-MNIST data", failures, lambda: load_data(args.train_samples, args.test_samples))
    if data is None:
        print("  the demo needs the Fashion-MNIST data; see lmkan_surgery/data.py for where it is looked for")
        return 1
    train, test = data
    progress(f"teacher: train a small CNN for {args.teacher_epochs} epoch(s)")
    teacher = teacher_cnn()
    train_teacher(teacher, train, args.teacher_epochs)
    attempt("teacher accuracy", failures, lambda: print(f"  teacher test accuracy {accuracy(teacher, test):.2%}"))
    progress("convert exact (G=8): the student computes the teacher's function")
    attempt("exact conversion", failures, lambda: exact_step(teacher, train, test))
    progress(f"plan to 0.5x MACs: planner / prune-only / int8 arms, trainable arms distilled {args.distill_epochs} "
             f"epoch(s) on {args.distill_samples} images")
    student = attempt("budget plan + arms", failures,
                      lambda: arms_step(teacher, train, test, args.distill_epochs, args.distill_samples, args.out))
    if student is not None:
        progress("savings report: fvcore FLOPs (MACs), parameters, measured latency")
        attempt("savings report", failures, lambda: report_step(teacher, student, test, args.out))
        progress("ONNX export + onnxruntime check")
        attempt("ONNX export", failures, lambda: onnx_step(student, test, args.out))
    print(f"\noutputs in {args.out}:")
    for item in sorted(args.out.iterdir()):
        print(f"  {item.name}")
    if failures:
        print("\nincomplete demo:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"demo finished in {time.perf_counter() - start:.0f}s")
    sys.exit(code)
