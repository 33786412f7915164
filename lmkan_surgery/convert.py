"""The command line: build a model, calibrate, convert to lmKAN, optionally distill, report savings, export ONNX.

``python tools/convert.py --model resnet18 --data synthetic --quick`` (also ``python -m lmkan_surgery.convert`` and
the ``lmkan-convert`` script). The default mode plans the model to a budget (0.5x MACs) and prints the planner's
lmKAN arm beside the prune-only and int8 arms; --mode exact / shrink convert as lmkanify does.
Exit codes: 0 ok, 2 usage error, 1 failure (one line naming the cause).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pickle
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .api import lmkanify
from .config import LMKANConfig
from .data import load_fashion_mnist
from .planning import Budget
from .datasources import DataSpec, import_factory, load_source, parse_data
from .convert_arms import run_arms
from .distill import DistillConfig, distill
from .errors import ConfigError, LMKANError
from .report import compare
from .passes.select import PatternSet
from .report.flops import quiet
from .serialization import save

PROG = "lmkan-convert"
LARGE_STUDENT_BYTES = 1_000_000_000  # students above this are announced before they are written


class UsageError(Exception):
    """A bad argument: exit code 2."""


class StepFailure(Exception):
    """A step that could not run (a feature not available, a model that does not fit): exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise instead of printing the usage block."""
        raise UsageError(message)


def _number(kind: Callable[[str], Any], text: str, ok: Callable[[Any], bool], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return _number(int, text, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def finite_float(text: str) -> float:
    """argparse type: a finite float."""
    return _number(float, text, math.isfinite, "a finite number")


def data_source(text: str) -> DataSpec:
    """argparse type: a --data value (datasources.parse_data)."""
    try:
        return parse_data(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of lmkan-convert."""
    p = _Parser(prog=PROG, description="Convert a model's Linear/Conv2d layers to lmKAN layers and report savings.")
    p.add_argument("--model", required=True,
                   help="a torchvision classification model name (resnet18, mobilenet_v2, ...) or package.module:factory")
    p.add_argument("--weights", type=Path, help="local state_dict (.pt) to load; otherwise random initialisation")
    p.add_argument("--num-classes", type=positive_int,
                   help="classifier outputs (default: the model's own, 10 for --data)")
    p.add_argument("--input-shape", default=None, help="example input shape, e.g. 1,3,224,224 (the batch is ignored)")
    p.add_argument("--mode", choices=("budget", "exact", "shrink"), default="budget",
                   help="budget (default): plan keep / narrow / lmKAN per hidden width to a cost budget and compare "
                        "with prune-only and int8 arms; exact: keep shapes; shrink: narrow every hidden width")
    p.add_argument("--budget-macs", type=finite_float,
                   help="budget as a fraction of the original's formula MACs (default 0.5; --mode budget only)")
    p.add_argument("--budget-bytes", type=finite_float,
                   help="budget as a fraction of the original's bytes (default: no limit; --mode budget only)")
    p.add_argument("--budget-latency", type=finite_float,
                   help="budget as a fraction of the original's CPU latency at batch 256 (--mode budget only)")
    p.add_argument("--width", type=finite_float,
                   help="shrink target (LMKANConfig.width, default 0.5; --mode shrink only)")
    p.add_argument("--num-grids", type=positive_int, default=8, help="grid intervals G of every lmKAN layer")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="REGEX",
                   help="module names, types or regexes to keep unconverted (added to the defaults)")
    p.add_argument("--data", type=data_source, default=DataSpec("synthetic"),
                   help="calibration/distillation data: synthetic (random tensors), fashion-mnist, npz:PATH (arrays x, "
                        "y), imagefolder:PATH or module:package.module:factory (returns train, val datasets)")
    p.add_argument("--distill-epochs", type=non_negative_int, default=0, help="epochs of distillation after conversion")
    p.add_argument("--onnx", type=Path, help="export the converted model to this file (relative: inside --out)")
    p.add_argument("--out", type=Path, default=Path("lmkan_out"), help="output folder (default ./lmkan_out)")
    p.add_argument("--quick", action="store_true", help="few calibration batches and short timing (smoke runs)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    p.add_argument("--traceback", action="store_true", help="print the full traceback on failure")
    return p


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224); at least two positive dimensions."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated integers like 1,3,224,224, got {text!r}") from None
    if len(shape) < 2 or any(n < 1 for n in shape):
        raise UsageError(f"--input-shape needs at least two positive dimensions (batch, features...), got {text!r}")
    return shape


@dataclass
class Settings:
    """What --quick changes: data sizes, calibration, timing effort."""

    batch: int
    calibration_batches: int
    train_samples: int
    val_samples: int
    throughput_batch: int
    repeats: int
    budget_s: float


def settings(quick: bool) -> Settings:
    """Run sizes for normal or --quick runs."""
    return Settings(8, 2, 128, 64, 8, 3, 1.0) if quick else Settings(32, 8, 2048, 512, 32, 10, 5.0)


class Progress:
    """Numbered step lines with the elapsed time: '[2/5]   3.1s  convert ...'."""

    def __init__(self, total: int) -> None:
        self.total, self.step, self.started = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        """Print the next step's line."""
        self.step += 1
        print(f"[{self.step}/{self.total}] {time.perf_counter() - self.started:6.1f}s  {text}", flush=True)


def optional(module: str, feature: str, attribute: str, extra: str | None = None) -> Any:
    """`module.attribute`, or StepFailure saying `feature` is not available (and which extra installs it)."""
    hint = f"; pip install 'lmkan-surgery[{extra}]'" if extra else ""
    try:
        return getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as err:
        raise StepFailure(f"{feature} is not available in this build ({err}){hint}") from None
    except AttributeError:
        raise StepFailure(f"{feature} is not available in this build ({module}.{attribute} is missing)") from None


def build_model(spec: str, num_classes: int | None) -> nn.Module:
    """A torchvision classification model by name, or `package.module:factory()`; UsageError if unknown."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if ":" in spec:
        try:
            factory = import_factory(spec)
        except ConfigError as err:
            raise UsageError(f"--model {spec!r}: cannot import the factory ({err})") from None
        return factory(**kwargs)
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if spec not in names:
        close = [n for n in names if n.startswith(spec[:4])][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else " (or use package.module:factory)"
        raise UsageError(f"--model {spec!r} is not a torchvision classification model{hint}")
    return torchvision.models.get_model(spec, weights=None, **kwargs)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a local file (also accepted nested under 'state_dict' or 'model'); UsageError naming the
    file when it is not one. Only tensors are unpickled (weights_only=True), whatever the file holds."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, UnicodeDecodeError) as err:  # random bytes can fail in the pickle's text, too
        if "Unsupported global" in str(err):  # a pickled class: a whole model or a training-state object
            raise UsageError(f"--weights {path} holds pickled Python objects (a whole model?), which are not "
                             f"loaded for safety: save and pass model.state_dict() instead") from None
        raise UsageError(f"--weights {path} is not a PyTorch checkpoint (text or random bytes?): save one with "
                         f"torch.save(model.state_dict(), path)") from None
    except Exception as err:  # noqa: BLE001 - arbitrary bytes make torch.load raise almost anything
        raise UsageError(f"--weights {path} is not a readable PyTorch checkpoint ({type(err).__name__}; truncated, "
                         f"empty or another format?): save one with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights {path} holds a {type(state).__name__}, not a state_dict of tensors")
    return state


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a local state_dict into the model."""
    state = read_weights(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise StepFailure(f"{path} does not fit the model: {str(err).splitlines()[1].strip()}") from None


def default_input_shape(data: DataSpec) -> tuple[int, ...]:
    """Fashion-MNIST images by default for --data fashion-mnist; torchvision's 224x224 RGB otherwise."""
    return (1, 3, 28, 28) if data.kind == "fashion-mnist" else (1, 3, 224, 224)


def fit_images(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Adapt Fashion-MNIST images [B, 1, 28, 28] to an input shape: repeat channels, resize, or flatten."""
    if len(shape) == 2 and shape[1] == x[0].numel():
        return x.flatten(1)
    if len(shape) != 4:
        raise UsageError(f"--data fashion-mnist needs an image (N,C,H,W) or flat (N,F) input shape, got {shape}")
    if x.shape[1] != shape[1]:
        x = x.mean(1, keepdim=True).expand(-1, shape[1], -1, -1)
    if tuple(x.shape[2:]) != shape[2:]:
        x = F.interpolate(x, size=shape[2:], mode="bilinear", align_corners=False)
    return x.contiguous()


Pair = tuple[torch.Tensor, torch.Tensor]


def make_data(args: argparse.Namespace, shape: tuple[int, ...], num_classes: int, run: Settings) -> tuple[Pair, Pair]:
    """(train, validation) as (inputs, labels) tensors; inputs shaped like `shape` apart from the batch."""
    if args.data.kind == "synthetic":
        gen = torch.Generator().manual_seed(args.seed)
        return tuple((torch.randn(n, *shape[1:], generator=gen), torch.randint(0, num_classes, (n,), generator=gen))
                     for n in (run.train_samples, run.val_samples))
    pairs = []
    for split, n in (("train", run.train_samples), ("test", run.val_samples)):
        images, labels = load_fashion_mnist(split, as_dataset=False)
        pairs.append((fit_images(images[:n], shape), labels[:n]))
    return pairs[0], pairs[1]


def agreement(teacher: nn.Module, student: nn.Module, data: Pair, batch: int) -> str:
    """Max relative output difference and top-1 agreement of student vs teacher on `data`."""
    worst, same = 0.0, 0
    with torch.no_grad():
        for x in data[0].split(batch):
            a, b = teacher(x), student(x)
            worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)))
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
    return f"student vs original: max relative difference {worst:.2e}, top-1 agreement {same / len(data[0]):.1%}"


def _onnx_path(out: Path, onnx: Path) -> Path:
    return onnx if onnx.is_absolute() else out / onnx


def check_args(args: argparse.Namespace) -> tuple[tuple[int, ...], LMKANConfig]:
    """(input shape, conversion config) after every check that needs no model: UsageError naming the option."""
    if not args.model.strip():
        raise UsageError("--model must name a torchvision model or package.module:factory, got an empty string")
    shape = parse_shape(args.input_shape) if args.input_shape else default_input_shape(args.data)
    if args.weights is not None and not args.weights.is_file():
        raise UsageError(f"--weights {str(args.weights)!r}: no such file")
    if args.mode != "shrink" and args.width is not None:
        raise UsageError(f"--width {args.width:g} only applies to --mode shrink (use --budget-macs with --mode budget)")
    for name in ("budget_macs", "budget_bytes", "budget_latency"):
        if args.mode != "budget" and getattr(args, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')} only applies to --mode budget")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {str(args.out)!r} exists and is not a folder")
    if args.onnx is not None and (args.onnx.name in ("", ".", "..") or _onnx_path(args.out, args.onnx).is_dir()):
        raise UsageError(f"--onnx {str(args.onnx)!r} must name a file, e.g. student.onnx")
    for pattern in args.exclude:
        try:
            re.compile(pattern)
        except re.error as err:
            raise UsageError(f"--exclude {pattern!r} is not a valid regular expression: {err}") from None
    width = 0.5 if args.width is None else args.width
    try:
        limits = (args.budget_macs, args.budget_bytes, args.budget_latency)
        macs = 0.5 if all(v is None for v in limits) else args.budget_macs
        config = LMKANConfig(num_grids=args.num_grids, mode=args.mode, width=width, exclude=list(args.exclude),
                             input_norm="quantile" if args.mode == "budget" else "affine", budget_macs=macs,
                             budget_bytes=args.budget_bytes, budget_latency=args.budget_latency)
    except LMKANError as err:  # ConfigError, GridSizeError; budget limits named by their options
        message = re.sub(r"Budget\.(macs|bytes|latency)", r"--budget-\1", str(err))
        raise UsageError(message) from None
    return shape, config


def check_patterns(model: nn.Module, config: LMKANConfig) -> None:
    """UsageError when an --exclude pattern names a layer type that neither torch.nn nor the model has."""
    try:
        PatternSet(config.exclude, "exclude", model)
    except ConfigError as err:
        raise UsageError(f"--exclude: {err}") from None


def save_student(student: nn.Module, path: Path) -> None:
    """lmkan_surgery.save, announcing a large file (an exact conversion multiplies the weights) before writing."""
    size = sum(v.numel() * v.element_size() for v in student.state_dict().values())
    if size > LARGE_STUDENT_BYTES:
        print(f"  writing a {size / 1e9:.1f} GB student to {path} (lmKAN tables hold (G+1)^2/2 times the weights of "
              f"the layers they replace; --mode shrink or a smaller --num-grids gives a smaller one)", flush=True)
    save(student, path)


def convert_step(args: argparse.Namespace, model: nn.Module, config: LMKANConfig, example: torch.Tensor,
                 calibration: list[torch.Tensor], val: Pair, train: Pair, rs: Settings,
                 progress: Progress) -> nn.Module:
    """--mode exact / shrink: lmkanify, agreement with the original, optional distillation; saves the student."""
    progress(f"calibrate + convert ({args.mode}, G={args.num_grids}) on {len(calibration)} {args.data} batches "
             f"of {rs.batch}")
    student, conversion = lmkanify(model, config=config, example_inputs=(example,), calibration=calibration)
    print(conversion)
    print(agreement(model, student.eval(), val, rs.batch))
    (args.out / "conversion.json").write_text(conversion.to_json() + "\n")
    (args.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    save_student(student, args.out / "student.pt")
    if args.distill_epochs:
        progress(f"distill: {args.distill_epochs} epoch(s) on {len(train[0])} {args.data} samples")
        distill(student, model, train, val, config=DistillConfig(epochs=args.distill_epochs, batch_size=rs.batch * 4))
        print(agreement(model, student.eval(), val, rs.batch))
        save_student(student, args.out / "student.pt")
    return student


def load_user_data(args: argparse.Namespace, shape: tuple[int, ...], run: Settings) -> tuple[Pair, Pair] | None:
    """(train, validation) from --data npz:/imagefolder:/module: (UsageError on bad content), None for built-ins."""
    try:
        return load_source(args.data, shape, run.train_samples + run.val_samples, args.seed)
    except ConfigError as err:
        raise UsageError(f"--data {err}") from None


def run(args: argparse.Namespace) -> int:
    """All steps of one conversion; raises UsageError / StepFailure / anything else on failure."""
    shape, config = check_args(args)
    rs = settings(args.quick)
    user = load_user_data(args, shape, rs)
    if user is not None and not args.input_shape:
        shape = (1, *user[0][0].shape[1:])
    budget = args.mode == "budget"
    progress = Progress(4 + (args.distill_epochs > 0 and not budget) + (args.onnx is not None))
    torch.manual_seed(args.seed)
    num_classes = args.num_classes or (10 if args.data.kind == "fashion-mnist" else None)
    model = build_model(args.model, num_classes).eval()
    example = torch.randn(*shape) if user is None else user[0][0][:1]
    try:
        with torch.no_grad():
            outputs = model(example)
    except Exception as err:
        raise UsageError(f"--input-shape {','.join(map(str, shape))} does not fit {args.model}: "
                         f"{str(err).splitlines()[0]}") from None
    num_classes = num_classes or outputs.shape[-1]
    check_patterns(model, config)
    if args.weights is not None:
        load_weights(model, args.weights)
        origin = f"weights from {args.weights}"
    else:
        origin = "RANDOMLY INITIALISED (no --weights; pretrained weights cannot be downloaded here)"
    params = sum(p.numel() for p in model.parameters())
    progress(f"build: {args.model}, {params / 1e6:.2f}M parameters, {origin}")
    args.out.mkdir(parents=True, exist_ok=True)
    train, val = user if user is not None else make_data(args, shape, num_classes, rs)
    calibration = list(train[0][: rs.calibration_batches * rs.batch].split(rs.batch))
    if budget:
        limits = Budget(config.budget_macs, config.budget_bytes, config.budget_latency).describe()
        progress(f"plan to {limits} (planner, prune-only and int8 arms, {args.distill_epochs} distillation epoch(s) "
                 f"each trainable arm) on {len(calibration)} {args.data} batches of {rs.batch}")
        planned, _ = run_arms(model, calibration, example, train, val, config, args.distill_epochs, rs.batch * 4,
                              rs.throughput_batch, rs.repeats, rs.budget_s, args.out)
        student = planned.model
        (args.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        save_student(student, args.out / "student.pt")
    else:
        student = convert_step(args, model, config, example, calibration, val, train, rs, progress)
    with quiet():  # fvcore's import warns about TorchScript
        optional("fvcore.nn", "the savings report", "FlopCountAnalysis", extra="report")
    progress("report: fvcore FLOPs, parameters, measured latency")
    report = compare(model, student.eval(), (example,), batch_sizes=(1, rs.throughput_batch), repeats=rs.repeats,
                     budget_s=rs.budget_s)
    print(report)
    report.save(args.out)

    if args.onnx is not None:
        export_onnx = optional("lmkan_surgery.onnx", "ONNX export", "export_onnx", extra="onnx")
        path = _onnx_path(args.out, args.onnx)
        progress(f"ONNX export + onnxruntime validation: {path}")
        result = export_onnx(student, path, (example,), validate=True)
        if result is not None:
            print(result)
    progress(f"done: outputs in {args.out.resolve()}")
    for item in sorted(args.out.iterdir()):
        print(f"  {item.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, map failures to exit codes (2 usage, 1 failure) with one-line messages."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        return run(args)
    except UsageError as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1
    except Exception as err:  # every other failure: one line, the full traceback on request
        if args is not None and args.traceback:
            traceback.print_exc()
        lines = str(err).strip().splitlines() or [""]
        cause = lines[0] if isinstance(err, StepFailure) else f"{type(err).__name__}: {lines[0]}"
        print(f"{PROG}: failed: {cause}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
