"""Configuration, schedules and the plain-Python result of recovery training and from-scratch lmKAN training."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError

TASKS = ("classification", "regression")


@dataclass
class TrainConfig:
    """Training recipe shared by `train_lmkan` and `distill`; defaults follow the paper README's simple schedule.

    Lambda (Hessian weight) = hessian_start * 10^(-max(0, epoch - hessian_hold_epochs) / hessian_decay_epochs),
    held at hessian_floor once it gets there, and 0 from hessian_off_epoch on when that is set (the paper README's
    second half; the penalty is then not computed at all). Gamma (preconditioned layers) is 0 until gamma_start_epoch, then
    rises linearly to gamma_target over gamma_ramp_epochs. The LR warms up linearly over `warmup` (a fraction of all
    steps), stays constant until `cosine_start` (a fraction) and then follows a cosine to lr * min_lr_ratio.
    Epoch-valued settings are continuous: a step counts as 1 / steps_per_epoch of an epoch.
    hessian_relative=True makes the Hessian term scale-free: lambda * L0 * mean over layers of penalty / (F * var(T)),
    with F the layer's number of 2-D functions, var(T) the variance of its table entries (detached, in the table's
    dtype) and L0 the loss of a constant prediction (regression: the variance of the targets, the teacher's outputs
    under KD, on the first batch; classification: log(classes)); every term then scales like the data loss under
    any rescaling of targets or tables, so the schedule means the same for any target scale.
    The Hessian term is added to the tables' gradients in closed form (it is quadratic in them); hessian_every=k
    evaluates it every k-th step and reuses it in between (stale by < k steps, weighted by the current lambda):
    about 1/k of its cost.
    table_lr_scale: the lmKAN tables' LR is lr * table_lr_scale (their own AdamW parameter group; every other
    parameter at lr). Default 1.0: on closed-form-fitted tables in 2-epoch distillation no scale helped consistently
    (x10: +0.6 points on one Fashion-MNIST plan, nothing on a methane one; docs/benchmarks.md, issue 14).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.02
    cosine_start: float = 0.5
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 10.0
    task: str = "classification"
    hessian_start: float = 1.0
    hessian_decay_epochs: float = 30.0
    hessian_hold_epochs: float = 0.0
    hessian_floor: float = 0.0
    hessian_off_epoch: float | None = None
    gamma_target: float | None = 0.3
    gamma_start_epoch: float = 0.0
    gamma_ramp_epochs: float = 1.0
    train_all: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    bf16: bool = False
    device: str | None = None
    find_unused_parameters: bool = False
    seed: int = 0
    progress: bool = True
    hessian_relative: bool = False
    hessian_every: int = 1
    table_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be positive"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.warmup < 1 and 0 <= self.cosine_start <= 1, "warmup and cosine_start are fractions in [0, 1)"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip must be positive or None"),
            (self.task in TASKS, f"task must be one of {TASKS}"),
            (self.hessian_start >= 0 and self.hessian_floor >= 0, "hessian_start and hessian_floor must be >= 0"),
            (self.hessian_decay_epochs > 0, "hessian_decay_epochs (epochs per factor 10) must be positive"),
            (self.hessian_off_epoch is None or self.hessian_off_epoch >= 0, "hessian_off_epoch must be >= 0 or None"),
            (self.gamma_ramp_epochs >= 0 and self.gamma_start_epoch >= 0, "gamma epochs must be >= 0"),
            (self.table_lr_scale > 0, "table_lr_scale (lmKAN tables' LR / lr) must be positive"),
            (self.hessian_every >= 1, "hessian_every (steps between Hessian-gradient evaluations) must be >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0 (0: only at the end)"),
            (not self.resume or self.checkpoint_dir, "resume=True needs checkpoint_dir"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{type(self).__name__}: {message}")

    def hessian_lambda(self, epoch: float) -> float:
        """Hessian-regularizer weight at a (fractional) epoch: geometric decay, then held at the floor."""
        if self.hessian_start == 0 or (self.hessian_off_epoch is not None and epoch >= self.hessian_off_epoch):
            return 0.0
        decades = max(0.0, epoch - self.hessian_hold_epochs) / self.hessian_decay_epochs
        return max(self.hessian_floor, self.hessian_start * 10.0 ** (-decades))

    def gamma(self, epoch: float) -> float | None:
        """Weight of the lmKAN part of preconditioned layers at a (fractional) epoch; None leaves gamma untouched."""
        if self.gamma_target is None:
            return None
        if self.gamma_ramp_epochs == 0:
            return self.gamma_target if epoch >= self.gamma_start_epoch else 0.0
        return self.gamma_target * min(1.0, max(0.0, (epoch - self.gamma_start_epoch) / self.gamma_ramp_epochs))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (stored in checkpoints)."""
        return asdict(self)


@dataclass
class DistillConfig(TrainConfig):
    """Recovery-training recipe: loss = alpha * logits-KD + label_weight * hard-label + beta * layerwise
    + lambda * Hessian penalty. Only converted (lmKAN or reshaped) modules train unless train_all is set.

    `layer_map` maps student module names to teacher module names for layerwise matching (default: same names).
    """

    epochs: int = 4
    lr: float = 3e-4
    warmup: float = 0.05
    cosine_start: float = 0.0
    hessian_start: float = 1e-2
    hessian_decay_epochs: float = 0.5
    hessian_floor: float = 1e-6
    gamma_ramp_epochs: float = 0.5
    train_all: bool = False
    temperature: float = 4.0
    alpha: float = 1.0
    label_weight: float = 0.0
    beta: float = 1.0
    layer_map: dict[str, str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ConfigError("DistillConfig: temperature must be positive")
        if min(self.alpha, self.label_weight, self.beta) < 0 or self.alpha + self.label_weight + self.beta == 0:
            raise ConfigError("DistillConfig: alpha, label_weight and beta must be >= 0 and not all zero")


class WarmupCosine:
    """LR multiplier: linear warm-up, constant, then cosine decay to min_ratio (a LambdaLR-compatible callable)."""

    def __init__(self, total_steps: int, warmup_steps: int, cosine_start_step: int, min_ratio: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.cosine_start_step = max(cosine_start_step, warmup_steps)
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step < self.cosine_start_step:
            return 1.0
        span = max(1, self.total_steps - self.cosine_start_step)
        progress = min(1.0, (step - self.cosine_start_step) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class EpochRecord:
    """What one epoch did: mean losses over its steps, the schedules at its end, validation metric, wall time."""

    epoch: int
    step: int
    loss: float
    terms: dict[str, float]
    hessian_lambda: float
    gamma: float | None
    lr: float
    val_metric: float | None
    wall_time: float


@dataclass
class DistillResult:
    """History of a training run; `val_metric` is accuracy (classification) or RMSE (regression)."""

    history: list[EpochRecord] = field(default_factory=list)
    steps: int = 0
    metric_name: str = "accuracy"
    checkpoint_path: str | None = None
    wall_time: float = 0.0

    @property
    def final_val_metric(self) -> float | None:
        """The last epoch's validation metric (None without validation data)."""
        return self.history[-1].val_metric if self.history else None
