"""The training loop behind `distill` (recovery training from a teacher) and `train_lmkan` (from scratch)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import batches
from ..errors import CheckpointError, ConfigError, NonFiniteLossError
from ..modelcopy import check_model
from ..nn import LMKANLayer
from ..nn.hessian import hessian_term
from . import runtime as rt
from .config import DistillConfig, DistillResult, EpochRecord, TrainConfig, WarmupCosine
from .losses import LayerMatcher, check_same_outputs, first_nonfinite_module, label_loss, logits_kd
from .evaluation import evaluate
from .master_tables import float32_master_tables
from .optimizer import make_optimizer

EpochCallback = Callable[[EpochRecord, nn.Module], None]
StepCallback = Callable[[int], None]
_HessianTerm = tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, float]]]  # value, (table, grad, factor)
_RESUME_KEYS = ("epochs", "batch_size", "seed", "lr", "task", "hessian_start", "hessian_decay_epochs",
                "alpha", "beta", "label_weight", "temperature")  # the loss weights: another mix is another run


def _trainable_modules(student: nn.Module, teacher: nn.Module | None, train_all: bool) -> list[str]:
    """Names of modules that train: lmKAN layers plus modules whose parameters differ from the teacher's."""
    if train_all or teacher is None:
        return [""]
    teacher_params = {name: p.shape for name, p in teacher.named_parameters()}
    names = []
    for name, module in student.named_modules():
        own = [(f"{name}.{p}" if name else p, param) for p, param in module.named_parameters(recurse=False)]
        changed = any(teacher_params.get(full) != param.shape for full, param in own)
        if isinstance(module, LMKANLayer) or changed:
            names.append(name)
    return names


def _within(name: str, roots: list[str]) -> bool:
    return any(root == "" or name == root or name.startswith(root + ".") for root in roots)


class _Run:
    """One training run: set-up, the step, checkpoints, and the epoch loop."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, train_data: Any, val_data: Any,
                 cfg: TrainConfig, on_epoch_end: EpochCallback | None, on_step_end: StepCallback | None) -> None:
        self.cfg, self.on_epoch_end, self.on_step_end = cfg, on_epoch_end, on_step_end
        self.env, self.device = rt.setup_distributed(cfg.device)
        torch.manual_seed(cfg.seed)
        self.student, self.teacher = student.to(self.device), teacher
        if teacher is not None:
            teacher.to(self.device).eval().requires_grad_(False)
        self.train_set = rt.as_dataset(train_data, "train_data")
        self.val_set = rt.as_dataset(val_data, "val_data") if val_data is not None else None
        self.batches = rt.ShardedBatches(self.train_set, cfg.batch_size, cfg.seed, self.env)
        self.total_steps = cfg.epochs * self.batches.steps_per_epoch
        self._select_trainable()
        self.model = self._wrap()
        self.optimizer = make_optimizer(self.params, {m.table for _, m in self.lmkan_layers}, cfg)
        schedule = WarmupCosine(self.total_steps, round(cfg.warmup * self.total_steps),
                                round(cfg.cosine_start * self.total_steps), cfg.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.matcher = self._matcher()
        self.step, self.history, self.epoch_sums = 0, [], {}
        self.hessian_cache: _HessianTerm | None = None
        self.loss_ref: float | None = None  # first step's data loss, for hessian_relative
        self.checkpoint_path: str | None = None

    def _select_trainable(self) -> None:
        roots = _trainable_modules(self.student, self.teacher, self.cfg.train_all)
        for name, p in self.student.named_parameters():
            p.requires_grad_(_within(name.rpartition(".")[0], roots))
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("nothing to train: the student has no lmKAN layer and no module that differs from "
                              "the teacher (set train_all=True to train everything)")
        self.frozen = [m for name, m in self.student.named_modules() if not _within(name, roots)
                       and not any(_within(child, roots) for child, _ in m.named_modules(prefix=name))]
        self.lmkan_layers = [(n, m) for n, m in self.student.named_modules()
                             if isinstance(m, LMKANLayer) and _within(n, roots)]

    def _wrap(self) -> nn.Module:
        if self.env.world_size == 1:
            return self.student
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.student, device_ids=ids,
                                       find_unused_parameters=self.cfg.find_unused_parameters)

    def _matcher(self) -> LayerMatcher | None:
        cfg = self.cfg
        if self.teacher is None or not isinstance(cfg, DistillConfig) or cfg.beta == 0:
            return None
        pairs = cfg.layer_map or {name: name for name, _ in self.lmkan_layers}
        return LayerMatcher(self.student, self.teacher, pairs)

    def _set_modes(self) -> None:
        self.student.train()
        for module in self.frozen:
            module.training = False

    def _autocast(self):
        if self.cfg.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_gamma(self, epoch: float) -> float | None:
        gamma = self.cfg.gamma(epoch)
        if gamma is not None:
            for _, layer in self.lmkan_layers:
                if isinstance(getattr(layer, "gamma", None), torch.Tensor):
                    layer.gamma.fill_(gamma)
        return gamma

    def _terms(self, inputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """Every unweighted loss term of one step that goes through autograd (all but the Hessian term)."""
        cfg, terms = self.cfg, {}
        teacher_out = None
        if self.teacher is not None:
            if self.matcher is not None:
                self.matcher.begin()
            with torch.no_grad():
                teacher_out = batches.call(self.teacher, inputs)
            if self.matcher is not None:
                self.matcher.after_teacher()
        out = batches.call(self.model, inputs)
        label_weight = cfg.label_weight if isinstance(cfg, DistillConfig) else 1.0
        if teacher_out is not None and cfg.alpha > 0:
            terms["kd"] = logits_kd(out, teacher_out, cfg.task, cfg.temperature)
        if targets is not None and label_weight > 0:
            terms["label"] = label_loss(out, targets, cfg.task)
        if self.matcher is not None:
            layer = self.matcher.loss()
            if layer is not None:
                terms["layer"] = layer
        return terms

    def _weights(self, lam: float) -> dict[str, float]:
        cfg = self.cfg
        if isinstance(cfg, DistillConfig):
            return {"kd": cfg.alpha, "label": cfg.label_weight, "layer": cfg.beta, "hessian": lam}
        return {"label": 1.0, "hessian": lam}

    @torch.no_grad()
    def _hessian_term(self) -> _HessianTerm:
        """The Hessian term, its gradient per table and each one's factor, in closed form (the penalty is quadratic
        in the tables, so no autograd graph is needed): the sum of the layers' penalties, or (hessian_relative) the
        mean over layers of each layer's penalty per 2-D function divided by the variance of its table entries
        (held constant): invariant to any table scale."""
        tables = [m.table for _, m in self.lmkan_layers]
        value, grads, factors = hessian_term(tables, self.cfg.hessian_relative)
        return value.float(), list(zip(tables, grads, factors))

    def _cached_hessian_term(self) -> _HessianTerm:
        """_hessian_term, recomputed at steps divisible by cfg.hessian_every and reused (unweighted) in between."""
        cache = self.hessian_cache
        if cache is None or self.step % self.cfg.hessian_every == 0:
            cache = self.hessian_cache = self._hessian_term()
        return cache

    @torch.no_grad()
    def _hessian_scale(self, inputs: Any, targets: Any) -> float:
        """L0: the factor that makes the Hessian weight relative to the loss."""
        if self.loss_ref is None:
            if self.cfg.task == "regression":
                use_teacher = self.teacher is not None and (targets is None or getattr(self.cfg, "alpha", 0) > 0)
                ref = (self.teacher(inputs) if use_teacher else targets).float()
                data = ((ref - ref.mean(0)) ** 2).mean().reshape(1)
            else:
                data = torch.tensor([math.log(max(2, self.model(inputs).shape[-1]))], device=self.device)
            self.loss_ref = float(rt.all_mean(data.to(self.device), self.env))
        return self.loss_ref

    def _nonfinite(self, what: str, inputs: Any, terms: dict[str, torch.Tensor]) -> NonFiniteLossError:
        bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
        culprit = first_nonfinite_module(self.student, inputs)
        if culprit is None and self.teacher is not None:
            culprit = first_nonfinite_module(self.teacher, inputs)
            culprit = f"teacher module '{culprit}'" if culprit else None
        elif culprit is not None:
            culprit = f"student module '{culprit}'"
        if culprit is None:
            suspects = [n for n, m in self.lmkan_layers if not torch.isfinite(m.hessian_penalty()).all()]
            suspects += [n for n, p in self.student.named_parameters()
                         if p.grad is not None and not torch.isfinite(p.grad).all()]
            culprit = f"parameters/penalty of {suspects[:5]}" if suspects else "no module output (the loss itself)"
        kept = self.checkpoint_path or "none (no checkpoint written yet or checkpoint_dir unset)"
        return NonFiniteLossError(f"non-finite {what} at step {self.step} (epoch {self.step / self.batches.steps_per_epoch:.3f}); "
                                  f"non-finite terms: {bad or 'none'}; first non-finite output: {culprit}; "
                                  f"last good checkpoint kept: {kept}")

    def _any_rank(self, flag: bool) -> bool:
        if self.env.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value)
        return bool(value.item() > 0)

    def _clip_gradients(self) -> bool:
        """clip_grad_norm_ to cfg.grad_clip, with one read of the total norm: False when it is not finite (the norm
        pass doubles as the finiteness check), and the gradients multiplied only when they are clipped."""
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        value = float(norm)
        if not math.isfinite(value):
            return False
        if self.cfg.grad_clip is not None and self.cfg.grad_clip / (value + 1e-6) < 1.0:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.grad_clip, norm)
        return True

    def _train_step(self, batch: Any) -> dict[str, float]:
        epoch = self.step / self.batches.steps_per_epoch
        lam = self.cfg.hessian_lambda(epoch)
        self._set_gamma(epoch)
        inputs, targets = rt.split_batch(batches.to_device(batch, self.device))
        with self._autocast():
            terms = self._terms(inputs, targets)
        if not terms:
            raise ConfigError("no loss term: train_lmkan needs (inputs, targets) batches; distill needs alpha, "
                              "label_weight (with targets) or beta with matched layers")
        weights, hessian_grads = self._weights(lam), []
        if lam > 0 and self.lmkan_layers:
            terms["hessian"], hessian_grads = self._cached_hessian_term()
            if self.cfg.hessian_relative:
                weights["hessian"] = lam * self._hessian_scale(inputs, targets)
        else:
            self.hessian_cache = None  # a term that comes back starts fresh
        loss = sum(weights[k] * v for k, v in terms.items())
        if self._any_rank(not math.isfinite(float(loss.detach()))):
            raise self._nonfinite("loss", inputs, terms)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for table, grad, factor in hessian_grads:  # what backward of weight * penalty would add (a quadratic)
            if table.grad is None:
                table.grad = (grad * (weights["hessian"] * factor)).to(table.dtype)
            else:
                table.grad.add_(grad.to(table.dtype), alpha=weights["hessian"] * factor)
        if not self._clip_gradients():
            raise self._nonfinite("gradient", inputs, terms)
        self.optimizer.step()
        self.scheduler.step()
        values = {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        return dict(zip(values, rt.all_mean(torch.stack([v.float() for v in values.values()]), self.env).tolist()))

    @torch.no_grad()
    def _check_outputs(self) -> None:
        """Before any step: the student's and the teacher's outputs on two training samples must have one shape
        (ShapeError naming both otherwise), so a mismatch fails before the student changes."""
        if self.teacher is None or len(self.train_set) == 0:
            return
        rngs, modes = rt.rng_state(), {m: m.training for m in self.student.modules()}
        try:  # an augmenting dataset draws random numbers: the run must not see this look-ahead
            sample = rt.fetch(self.train_set, torch.arange(min(2, len(self.train_set))))
            inputs, _ = rt.split_batch(batches.to_device(sample, self.device))
            self.student.eval()
            check_same_outputs(batches.call(self.student, inputs), batches.call(self.teacher, inputs))
        finally:
            rt.set_rng_state(rngs)
            for module, mode in modes.items():
                module.training = mode

    def _payload(self, finished: bool) -> dict[str, Any]:
        states = [rt.rng_state()]
        if self.env.world_size > 1:
            states = [None] * self.env.world_size
            dist.all_gather_object(states, rt.rng_state())
        return {"model": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": states, "step": self.step,
                "epoch": self.step // self.batches.steps_per_epoch, "epoch_sums": dict(self.epoch_sums),
                "history": [asdict(r) for r in self.history], "config": self.cfg.to_dict(),
                "world_size": self.env.world_size, "finished": finished, "hessian_loss_ref": self.loss_ref,
                "hessian_cache": None if self.hessian_cache is None
                else (self.hessian_cache[0], [grad * factor for _, grad, factor in self.hessian_cache[1]])}

    def _checkpoint(self, finished: bool = False) -> None:
        if not self.cfg.checkpoint_dir:
            return
        payload = self._payload(finished)
        if self.env.is_main:
            self.checkpoint_path = str(rt.save_checkpoint(self.cfg.checkpoint_dir, payload))
        else:
            self.checkpoint_path = str(Path(self.cfg.checkpoint_dir) / rt.CHECKPOINT_NAME)
        rt.barrier(self.env)

    def _resume(self) -> bool:
        """Load the checkpoint if asked; True when it already holds a finished run."""
        if not self.cfg.resume:
            return False
        state = rt.load_checkpoint(self.cfg.checkpoint_dir)
        if state is None:
            return False
        saved, now = state["config"], self.cfg.to_dict()
        diff = [k for k in _RESUME_KEYS if saved.get(k) != now.get(k)]
        if diff:
            changes = ", ".join(f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in diff)
            raise CheckpointError(f"checkpoint in {self.cfg.checkpoint_dir} was made with different settings: "
                                  f"{changes}; resume with the same settings, or use another checkpoint_dir")
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        rt.set_rng_state(rngs[self.env.rank] if self.env.rank < len(rngs) else rngs[0])
        self.step, self.epoch_sums = state["step"], dict(state["epoch_sums"])
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.loss_ref = state.get("hessian_loss_ref")
        cache = state.get("hessian_cache")  # hessian_every > 1: the reused gradient, so resuming stays exact
        if cache is not None:
            self.hessian_cache = (cache[0], [(m.table, g, 1.0) for (_, m), g in zip(self.lmkan_layers, cache[1])])
        self.checkpoint_path = str(Path(self.cfg.checkpoint_dir) / rt.CHECKPOINT_NAME)
        return bool(state["finished"])

    def _end_epoch(self, epoch: int, started: float) -> None:
        steps = self.epoch_sums.pop("_steps", 1.0)
        means = {k: v / steps for k, v in self.epoch_sums.items()}
        self.epoch_sums = {}
        val = evaluate(self.student, self.val_set, self.cfg.task, device=self.device) if self.val_set else None
        self._set_modes()
        end = (epoch + 1) - 1e-9
        record = EpochRecord(epoch=epoch, step=self.step, loss=means.pop("loss", float("nan")), terms=means,
                             hessian_lambda=self.cfg.hessian_lambda(end), gamma=self.cfg.gamma(end),
                             lr=self.optimizer.param_groups[0]["lr"], val_metric=val,
                             wall_time=time.perf_counter() - started)
        self.history.append(record)
        if self.on_epoch_end is not None:
            self.on_epoch_end(record, self.student)

    def _show(self, bar: tqdm, loss: float) -> None:
        val = self.history[-1].val_metric if self.history else None
        shown = {"loss": f"{loss:.4g}", "lam": f"{self.cfg.hessian_lambda(self.step / self.batches.steps_per_epoch):.2g}"}
        if val is not None:
            shown["val"] = f"{val:.4f}"
        bar.set_postfix(shown, refresh=False)

    def run(self) -> DistillResult:
        cfg, spe = self.cfg, self.batches.steps_per_epoch
        try:
            self._check_outputs()
            finished = self._resume()
            self._set_modes()
            bar = tqdm(total=self.total_steps, initial=self.step, disable=not (cfg.progress and self.env.is_main),
                       desc="distill" if self.teacher is not None else "train_lmkan", dynamic_ncols=True)
            with bar:
                for epoch in range(self.step // spe if not finished else cfg.epochs, cfg.epochs):
                    started = time.perf_counter() - self.epoch_sums.pop("_wall", 0.0)
                    for batch in self.batches.epoch(epoch, self.step - epoch * spe):
                        values = self._train_step(batch)
                        self.step += 1
                        for k, v in values.items():
                            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                        self.epoch_sums["_steps"] = self.epoch_sums.get("_steps", 0.0) + 1
                        bar.update(1)
                        self._show(bar, values["loss"])
                        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step % spe:
                            self.epoch_sums["_wall"] = time.perf_counter() - started
                            self._checkpoint()
                            self.epoch_sums.pop("_wall")
                        if self.on_step_end is not None:
                            self.on_step_end(self.step)
                    self._end_epoch(epoch, started)
                    if cfg.checkpoint_every and epoch + 1 < cfg.epochs and self.step % cfg.checkpoint_every == 0:
                        self._checkpoint()
            if not finished:
                self._checkpoint(finished=True)
        finally:
            if self.matcher is not None:
                self.matcher.remove()
            rt.teardown_distributed(self.env)
        return DistillResult(history=self.history, steps=self.step,
                             metric_name="rmse" if cfg.task == "regression" else "accuracy",
                             checkpoint_path=self.checkpoint_path, wall_time=sum(r.wall_time for r in self.history))


def _train(student: nn.Module, teacher: nn.Module | None, train_data: Any, val_data: Any, cfg: TrainConfig,
           on_epoch_end: EpochCallback | None, on_step_end: StepCallback | None) -> DistillResult:
    """One run with half-precision tables trained as float32 masters; the last epoch's validation metric is then
    re-measured with the tables rounded to their storage dtype (what the returned student computes)."""
    with float32_master_tables(student) as widened:
        run = _Run(student, teacher, train_data, val_data, cfg, on_epoch_end, on_step_end)
        result = run.run()
    if widened and result.history and run.val_set is not None:
        result.history[-1].val_metric = evaluate(student, run.val_set, cfg.task, device=run.device)
    return result


def distill(student: nn.Module, teacher: nn.Module, train_data: Any, val_data: Any = None,
            config: DistillConfig | None = None, on_epoch_end: EpochCallback | None = None,
            on_step_end: StepCallback | None = None) -> DistillResult:
    """Recover a converted student's accuracy from its teacher (logits KD + layerwise + Hessian schedule)."""
    config = config if config is not None else DistillConfig()
    if not isinstance(config, DistillConfig):
        raise ConfigError(f"distill needs a DistillConfig, got {type(config).__name__}")
    check_model(student, "distill (student)")
    check_model(teacher, "distill (teacher)")
    return _train(student, teacher, train_data, val_data, config, on_epoch_end, on_step_end)


def train_lmkan(model: nn.Module, train_data: Any, val_data: Any = None, config: TrainConfig | None = None,
                on_epoch_end: EpochCallback | None = None, on_step_end: StepCallback | None = None) -> DistillResult:
    """Train an lmKAN network from scratch with the paper's multistage schedule (labels needed)."""
    config = config if config is not None else TrainConfig()
    if isinstance(config, DistillConfig):
        raise ConfigError("train_lmkan takes a TrainConfig; DistillConfig is for distill()")
    check_model(model, "train_lmkan")
    return _train(model, None, train_data, val_data, config, on_epoch_end, on_step_end)
