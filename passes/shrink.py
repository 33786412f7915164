"""Shrink pass: dependency-aware narrowing of hidden widths, then local least-squares reconstruction.

A hidden space is the output of a producer Linear/Conv2d (groups=1) that reaches exactly one consumer of the same
kind through a chain of single-user elementwise or per-channel ops (activations, dropout, BatchNorm; after a conv,
2-D pooling): MLP blocks (Linear -> act -> Linear), conv -> BN -> act -> pool -> conv stacks and the inner convs of
residual blocks; or a conv's output that reaches a Linear through a flatten of every non-batch dimension (a CNN's
head: channel c owns the H*W consecutive input features c*H*W ... of the Linear). Anything else (a residual add, a
concat, two users) couples the channels, so they are kept. A unit removed from a producer is removed from the
BatchNorms of the chain and from the consumer's input (its whole feature block after a flatten). Each consumer is
then refitted by ridge least squares, in execution order, from the narrowed model's own inputs to the original
model's outputs on the calibration batches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from lmkan_surgery.config import LMKANConfig
from lmkan_surgery.conversion_report import ShrinkGroupRecord

from lmkan_surgery.errors import ConfigError
from lmkan_surgery.rules import rule_for

from .calibrate import input_moments
from .elementwise import (flattens_channels, is_channel_pool, is_per_channel, is_unitwise_function,
                          is_unitwise_method, is_unitwise_module, narrow_per_channel)
from .flops import formula_flops
from .probe import Probe, call, eval_mode
from .replace import set_module
from .select import Candidate
from .trace import TraceResult

MIN_KEPT = 2


@dataclass
class HiddenSpace:
    """A producer's output units, the chain of per-unit ops after it and the consumer reading them."""

    producer: str
    chain: list[str]
    consumer: str
    size: int
    kept: torch.Tensor | None = None
    span: int = 1  # consumer input features per producer unit (H*W when the chain flattens a conv's NCHW output)

    def consumer_index(self, kept: torch.Tensor) -> torch.Tensor:
        """The consumer's input features fed by the producer units `kept` (their whole blocks after a flatten)."""
        if self.span == 1:
            return kept
        return (kept[:, None] * self.span + torch.arange(self.span, device=kept.device)).flatten()


@dataclass
class ShrinkResult:
    """What the shrink pass changed: groups for the report, narrowed module names and the factor used."""

    groups: list[ShrinkGroupRecord] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    group_of: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    factor: float | None = None
    heldout: dict[str, float] = field(default_factory=dict)
    unmet: str | None = None  # why the requested width/budget was not reached (None when it was)


def _step(node: fx.Node, source: fx.Node, modules: dict[str, nn.Module], conv: bool, flat: bool) -> str:
    """How `node` passes the units of `source` on: "unit" when it maps each unit to the same unit (with conv, the
    producer is a Conv2d: 2-D spatial pooling counts too; after a flatten, per-channel modules and pooling do not),
    "flatten" when it flattens a conv's NCHW output (once), "" when narrowing cannot pass through it."""
    others = [a for a in (*node.args[1:], *node.kwargs.values()) if isinstance(a, fx.Node)]
    if not node.args or node.args[0] is not source or others:
        return ""
    target = modules.get(node.target) if node.op == "call_module" else node.target
    if conv and not flat and flattens_channels(node.op, target, tuple(node.args[1:]), dict(node.kwargs)):
        return "flatten"
    pool = conv and not flat
    if node.op == "call_module":
        per_feature = is_unitwise_module(target) and not (flat and is_per_channel(target))
        ok = per_feature or (pool and is_channel_pool(target))
    elif node.op == "call_function":
        ok = is_unitwise_function(target) or (pool and is_channel_pool(target))
    elif node.op == "call_method":
        ok = is_unitwise_method(target)
    else:
        ok = False
    return "unit" if ok else ""


def _same_kind(a: nn.Module, b: nn.Module) -> bool:
    """Producer and consumer are narrowable layers of one rule, ungrouped, of their stock type."""
    rule = rule_for(a)
    return (rule is not None and rule.narrowable and rule is rule_for(b) and rule.plain(a) and rule.plain(b)
            and getattr(a, "groups", 1) == 1 and getattr(b, "groups", 1) == 1)


def _flat_span(conv: nn.Module, linear: nn.Module) -> int:
    """Features per channel when a conv's flattened output feeds `linear` (0 when it is no stock Linear whose inputs
    split into one equal block per channel)."""
    channels = conv.out_channels
    if type(linear) is not nn.Linear or conv.groups != 1 or linear.in_features % channels:
        return 0
    return linear.in_features // channels


def find_hidden_spaces(model: nn.Module, trace: TraceResult, shrinkable: set[str], probe: Probe) -> list[HiddenSpace]:
    """Every producer -> chain -> consumer pattern of the traced graphs whose modules all run once."""
    spaces = []
    for part in trace.parts:
        prefix = f"{part.prefix}." if part.prefix else ""
        root = model.get_submodule(part.prefix)
        modules = dict(root.named_modules())
        for node in part.graph.nodes:
            name = f"{prefix}{node.target}" if node.op == "call_module" else None
            if name not in shrinkable or probe.calls.get(name) != 1:
                continue
            chain, cur, flat = [], node, False
            conv = isinstance(modules[node.target], nn.Conv2d)
            while len(cur.users) == 1:
                user = next(iter(cur.users))
                step = _step(user, cur, modules, conv, flat)
                if step:
                    flat = flat or step == "flatten"
                    chain.append(user)
                    cur = user
                    continue
                target = f"{prefix}{user.target}" if user.op == "call_module" else None
                if target in shrinkable and probe.calls.get(target) == 1 and user.args and user.args[0] is cur:
                    producer, consumer = modules[node.target], modules[user.target]
                    span = _flat_span(producer, consumer) if flat else int(_same_kind(producer, consumer))
                    if span:
                        chain_modules = [f"{prefix}{n.target}" for n in chain if n.op == "call_module"]
                        size = rule_for(producer).features(producer)[1]
                        spaces.append(HiddenSpace(name, chain_modules, target, size, span=span))
                break
    return spaces


def _kept_count(size: int, factor: float) -> int:
    return max(MIN_KEPT, min(size, round(size * factor)))


def _flops_at(factor: float, spaces: list[HiddenSpace], base: dict[str, int]) -> int:
    """Total formula FLOPs when every hidden space keeps _kept_count(size, factor) units."""
    scale_in = {s.consumer: _kept_count(s.size, factor) / s.size for s in spaces}
    scale_out = {s.producer: _kept_count(s.size, factor) / s.size for s in spaces}
    return round(sum(f * scale_in.get(n, 1.0) * scale_out.get(n, 1.0) for n, f in base.items()))


def choose_factor(spaces: list[HiddenSpace], candidates: list[Candidate], probe: Probe,
                  config: LMKANConfig) -> tuple[float, list[str]]:
    """The kept fraction of hidden units: config.width, or (width_mode='flops') the largest one whose formula FLOPs
    (lmKAN at 2x) stay within width x the original's."""
    if config.width_mode == "channels":
        return float(config.width), []
    base = {c.name: formula_flops(c.module, c.name, probe, c.convert) for c in candidates}
    base = {name: flops for name, flops in base.items() if flops is not None}
    original = sum(formula_flops(c.module, c.name, probe, False) or 0 for c in candidates)
    target = config.width * original
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if _flops_at(mid, spaces, base) <= target:
            low = mid
        else:
            high = mid
    warnings = []
    if _flops_at(low, spaces, base) > target:
        reached = _flops_at(low, spaces, base) / max(1, original)
        warnings.append(f"shrink: target formula-FLOP ratio {config.width} is out of reach (the unshrinkable layers "
                        f"alone cost more); reached {reached:.3f}")
    return max(low, 1e-6), warnings


def _unmet(result: ShrinkResult, config: LMKANConfig) -> ShrinkResult:
    """Record that the width/budget was not met: a problem in the report, a ConfigError when config.strict."""
    result.unmet = result.warnings[-1]
    if config.strict:
        raise ConfigError(f"{result.unmet} (config.strict=True); lower the target, convert more layers or make the "
                          f"hidden widths narrowable (Linear->act->Linear, Conv->BN->act->Conv chains)")
    return result


def _choose_units(model: nn.Module, spaces: list[HiddenSpace], factor: float, batches: list[Any]) -> None:
    """Keep the units with the largest RMS activation x consumer-column norm in every hidden space (over a unit's
    feature block when the chain flattens)."""
    moments = input_moments(model, [s.consumer for s in spaces], batches)
    for space in spaces:
        consumer = model.get_submodule(space.consumer)
        columns = rule_for(consumer).input_columns(consumer).norm(dim=1).to(torch.float64)
        rms = moments[space.consumer].second_moment().sqrt() if space.consumer in moments else 1.0
        score = (rms * columns).reshape(space.size, space.span).norm(dim=1)  # a unit's block after a flatten
        space.kept = torch.topk(score, _kept_count(space.size, factor)).indices.sort().values


def _narrowed(module: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
    """A copy of a narrowable layer (its rule) or a per-channel op (BatchNorm, PReLU) restricted to the given
    output (or channel) and input units."""
    rule = rule_for(module)
    if rule is not None:
        return rule.narrow(module, out_idx, in_idx)
    return narrow_per_channel(module, out_idx)


def narrow_modules(model: nn.Module, spaces: list[HiddenSpace]) -> list[str]:
    """Replace every producer, chain BatchNorm and consumer by its narrowed copy; returns the changed names."""
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    for space in spaces:
        out_idx[space.producer] = space.kept
        in_idx[space.consumer] = space.consumer_index(space.kept)
        for name in space.chain:
            if is_per_channel(model.get_submodule(name)):
                out_idx[name] = space.kept
    changed = list(dict.fromkeys([*out_idx, *in_idx]))
    for name in changed:
        set_module(model, name, _narrowed(model.get_submodule(name), out_idx.get(name), in_idx.get(name)))
    return changed


class _Stop(Exception):
    """Raised by a capture hook to end a forward early."""


def _capture(model: nn.Module, name: str, batch: Any) -> torch.Tensor:
    """The input of module `name` for one batch, stopping the forward right there."""
    box: list[torch.Tensor] = []

    def pre(mod, args):
        box.append(args[0])
        raise _Stop

    handle = model.get_submodule(name).register_forward_pre_hook(pre)
    try:
        call(model, batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box[0]


def _design(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows [n, K + 1] of the inputs the module multiplies by its weight (patches for a conv) and a ones column."""
    rows = rule_for(module).design_rows(module, x).to(torch.float64)
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


def _target(module: nn.Module, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Outputs as rows [n, out], restricted to the kept output units."""
    rows = rule_for(module).output_rows(y).to(torch.float64)
    return rows[:, idx] if idx is not None else rows


def teacher_outputs(teacher: nn.Module, names: list[str], batches: list[Any]) -> dict[str, list[torch.Tensor]]:
    """The outputs of the named teacher modules for every batch, from one forward per batch."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [teacher.get_submodule(name).register_forward_hook(
        lambda mod, args, out, _name=name: outputs[_name].append(out)) for name in names]
    try:
        for batch in batches:
            call(teacher, batch)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def reconstruct(student: nn.Module, name: str, out_idx: torch.Tensor | None, train: list[tuple[Any, torch.Tensor]],
                held: list[tuple[Any, torch.Tensor]], ridge: float) -> tuple[float, float | None]:
    """Refit consumer `name` by ridge least squares from its inputs in the student to the teacher's outputs
    (given per batch as (batch, teacher output) pairs); returns the (train, held-out) relative errors."""
    module = student.get_submodule(name)
    gram = xty = None
    yty = 0.0
    for batch, output in train:
        x = _design(module, _capture(student, name, batch))
        y = _target(module, output, out_idx)
        gram = x.t() @ x if gram is None else gram + x.t() @ x
        xty = x.t() @ y if xty is None else xty + x.t() @ y
        yty += float((y * y).sum())
    damping = ridge * float(gram.diagonal().mean()) + 1e-12
    solution = torch.linalg.solve(gram + damping * torch.eye(gram.shape[0], dtype=gram.dtype), xty)
    residual = float((solution * (gram @ solution)).sum() - 2 * (solution * xty).sum()) + yty
    with torch.no_grad():
        module.weight.copy_(solution[:-1].t().reshape(module.weight.shape).to(module.weight.dtype))
        module.bias = nn.Parameter(solution[-1].to(module.weight.dtype))
    train_error = (max(residual, 0.0) / max(yty, 1e-30)) ** 0.5
    if not held:
        return train_error, None
    num = den = 0.0
    for batch, output in held:
        x = _design(module, _capture(student, name, batch))
        y = _target(module, output, out_idx)
        num += float(((x @ solution - y) ** 2).sum())
        den += float((y * y).sum())
    return train_error, (num / max(den, 1e-30)) ** 0.5


def _components(spaces: list[HiddenSpace]) -> list[list[HiddenSpace]]:
    """Hidden spaces linked through a shared module (a consumer that is also a producer), in order."""
    groups: list[list[HiddenSpace]] = []
    for space in spaces:
        linked = [g for g in groups if any(s.consumer == space.producer or s.producer == space.consumer for s in g)]
        merged = [s for g in linked for s in g] + [space]
        groups = [g for g in groups if g not in linked] + [merged]
    return groups


def model_error(student: nn.Module, teacher: nn.Module, batches: list[Any]) -> dict[str, float]:
    """Relative L2 error and Pearson correlation of the student's outputs against the teacher's."""
    num = den = 0.0
    pairs = []
    for batch in batches:
        s, t = call(student, batch), call(teacher, batch)
        if not isinstance(s, torch.Tensor) or not isinstance(t, torch.Tensor):
            return {}
        s, t = s.double().flatten(), t.double().flatten()
        num += float(((s - t) ** 2).sum())
        den += float((t * t).sum())
        pairs.append(torch.stack([s, t]))
    corr = float(torch.corrcoef(torch.cat(pairs, dim=1))[0, 1])
    return {"rel_error": (num / max(den, 1e-30)) ** 0.5, "correlation": corr}


def shrink_model(student: nn.Module, trace: TraceResult, candidates: list[Candidate], probe: Probe,
                 config: LMKANConfig, batches: list[Any]) -> ShrinkResult:
    """Narrow every hidden space of the student in place and refit its consumers; the report's shrink part."""
    result = ShrinkResult()
    spaces = find_hidden_spaces(student, trace, {c.name for c in candidates if c.shrinkable}, probe)
    if not spaces:
        result.warnings.append(f"shrink: width {config.width} ({config.width_mode}) not met: no narrowable hidden "
                               "width found (needs traced Linear->act->Linear or Conv->BN->act->Conv chains whose "
                               "modules run once); nothing was narrowed")
        return _unmet(result, config)
    result.factor, result.warnings = choose_factor(spaces, candidates, probe, config)
    if result.warnings:
        _unmet(result, config)
    n_held = int(len(batches) * config.holdout_fraction)
    train, held = batches[:len(batches) - n_held], batches[len(batches) - n_held:]
    with eval_mode(student), torch.no_grad():
        teacher = copy.deepcopy(student)
        _choose_units(student, spaces, result.factor, train)
        result.changed = narrow_modules(student, spaces)
        out_of = {s.producer: s.kept for s in spaces}
        order = {name: i for i, name in enumerate(probe.order)}
        consumers = sorted((s.consumer for s in spaces), key=order.__getitem__)
        targets = teacher_outputs(teacher, consumers, train + held)
        errors = {}
        lmkan_grids = {c.name: c.num_grids for c in candidates if c.convert and config.shrink_fit == "lmkan"}
        block_errors = []
        for name in consumers:
            pairs = list(zip(train + held, targets[name]))
            errors[name] = reconstruct(student, name, out_of.get(name), pairs[:len(train)], pairs[len(train):],
                                       config.ridge)
            if name in lmkan_grids and type(student.get_submodule(name)) is nn.Linear and held:
                from .fit import shrink_refit  # local: fit.py builds on this module's captures

                rows = [(_capture(student, name, b), _target(student.get_submodule(name), y, out_of.get(name)))
                        for b, y in pairs]
                linear_err, lmkan_err, layer = shrink_refit(student, name, rows[:len(train)], rows[len(train):],
                                                            lmkan_grids[name], config.input_norm, config.quantile_mix)
                block_errors.append((linear_err, lmkan_err))
                if lmkan_err < linear_err:
                    set_module(student, name, layer)
        if block_errors:
            result.heldout["block_linear_refit"] = sum(e[0] for e in block_errors) / len(block_errors)
            result.heldout["block_lmkan_fit"] = sum(e[1] for e in block_errors) / len(block_errors)
        result.heldout.update(model_error(student, teacher, held or train))
    if not held:
        result.warnings.append("shrink: too few calibration batches for a held-out split; errors are on train data")
    for index, group in enumerate(_components(spaces)):
        name = f"g{index}"
        members = list(dict.fromkeys(n for s in group for n in (s.producer, *s.chain, s.consumer)))
        producers = {s.producer for s in group}
        boundary = [s.consumer for s in group if s.consumer not in producers]
        fits = [errors[b] for b in boundary]
        held_errors = [h for _, h in fits if h is not None]
        result.groups.append(ShrinkGroupRecord(
            name, members, hidden=sum(s.size for s in group), kept=sum(len(s.kept) for s in group),
            boundary=boundary, train_rel_error=sum(t for t, _ in fits) / len(fits),
            heldout_rel_error=sum(held_errors) / len(held_errors) if held_errors else None))
        result.group_of.update({m: name for m in members})
    return result
