"""distill / train_lmkan: schedules, loss decrease, frozen modules, layerwise hook wiring, NaN reporting."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lmkan_surgery import LMKANLinear
from lmkan_surgery.distill import AugmentedTensors, DistillConfig, TrainConfig, distill, train_lmkan
from lmkan_surgery.distill.config import WarmupCosine
from lmkan_surgery.distill.losses import LayerMatcher, logits_kd
from lmkan_surgery.errors import ConfigError, NonFiniteLossError

from distill_worker import tiny_config, tiny_problem


def test_hessian_lambda_schedule_follows_readme_recipe():
    cfg = TrainConfig()
    assert cfg.hessian_lambda(0) == 1.0
    assert cfg.hessian_lambda(30) == pytest.approx(0.1)
    assert cfg.hessian_lambda(250) == pytest.approx(10 ** (-250 / 30))
    held = TrainConfig(hessian_start=2.0, hessian_decay_epochs=2.0, hessian_hold_epochs=1.0, hessian_floor=1e-3)
    assert held.hessian_lambda(0.5) == 2.0 and held.hessian_lambda(1.0) == 2.0
    assert held.hessian_lambda(3.0) == pytest.approx(0.2)
    assert held.hessian_lambda(100.0) == 1e-3
    assert TrainConfig(hessian_start=0.0).hessian_lambda(0) == 0.0
    off = TrainConfig(hessian_decay_epochs=1.0, hessian_off_epoch=4.0)
    assert off.hessian_lambda(3.99) == pytest.approx(10 ** -3.99) and off.hessian_lambda(4.0) == 0.0
    with pytest.raises(ConfigError, match="hessian_off_epoch"):
        TrainConfig(hessian_off_epoch=-1.0)


def test_gamma_ramp_and_lr_schedule():
    cfg = TrainConfig(gamma_target=0.3, gamma_start_epoch=1.0, gamma_ramp_epochs=2.0)
    assert [cfg.gamma(e) for e in (0.0, 1.0, 2.0, 3.0, 9.0)] == pytest.approx([0, 0, 0.15, 0.3, 0.3])
    assert TrainConfig(gamma_target=None).gamma(5.0) is None
    sched = WarmupCosine(total_steps=100, warmup_steps=10, cosine_start_step=50, min_ratio=0.1)
    assert sched(0) == pytest.approx(0.1) and sched(9) == 1.0 and sched(30) == 1.0
    assert sched(75) == pytest.approx(0.1 + 0.9 * 0.5) and sched(100) == pytest.approx(0.1)


def test_config_validation():
    with pytest.raises(ConfigError, match="task"):
        DistillConfig(task="ranking")
    with pytest.raises(ConfigError, match="resume"):
        DistillConfig(resume=True)
    with pytest.raises(ConfigError, match="train_lmkan takes"):
        train_lmkan(nn.Linear(2, 2), (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), config=DistillConfig())


def test_logits_kd_is_zero_for_equal_logits_and_scaled_by_t2():
    logits = torch.randn(5, 4)
    assert logits_kd(logits, logits, "classification", 3.0).abs() < 1e-6
    other = torch.randn(5, 4)
    kl1 = logits_kd(other, logits, "classification", 1.0)
    expected = (torch.softmax(logits, -1) * (torch.log_softmax(logits, -1) - torch.log_softmax(other, -1))).sum(-1)
    assert kl1.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert logits_kd(other, logits, "regression", 3.0) == pytest.approx(((other - logits) ** 2).mean().item())


def test_distill_lowers_loss_and_keeps_frozen_modules_bitwise():
    student, teacher, data = tiny_problem(n=128)
    frozen_before = {k: v.clone() for k, v in student.state_dict().items() if not k.startswith("3.")}
    seen = []
    result = distill(student, teacher, data, data, tiny_config(epochs=4, lr=1e-2),
                     on_epoch_end=lambda record, model: seen.append(record.epoch))
    assert seen == [0, 1, 2, 3] and result.steps == 4 * 8
    losses = [r.loss for r in result.history]
    assert losses[-1] < losses[0] * 0.8, losses
    assert result.history[-1].terms["layer"] < result.history[0].terms["layer"]
    assert result.history[0].gamma is not None and student[3].gamma.item() == pytest.approx(0.3)
    for key, value in student.state_dict().items():
        if key in frozen_before:
            assert torch.equal(value, frozen_before[key]), key  # incl. BatchNorm running statistics
    assert all(not p.requires_grad for name, p in student.named_parameters() if not name.startswith("3."))
    assert 0.0 <= result.final_val_metric <= 1.0


def test_train_all_updates_everything():
    student, teacher, data = tiny_problem()
    before = copy.deepcopy(student.state_dict())
    distill(student, teacher, data, None, tiny_config(epochs=1, train_all=True))
    assert not torch.equal(before["0.weight"], student.state_dict()["0.weight"])
    assert not torch.equal(before["1.running_mean"], student.state_dict()["1.running_mean"])


def test_layerwise_matching_feeds_the_teacher_input_to_the_student_module():
    teacher = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    student = copy.deepcopy(teacher)
    student[0] = LMKANLinear(4, 6, num_grids=4)  # the student's own activations now differ from the teacher's
    student[2] = LMKANLinear(6, 6, num_grids=4)
    received = []
    student[2].register_forward_hook(lambda m, args, out: received.append(args[0].detach().clone()))
    matcher = LayerMatcher(student, teacher, {"0": "0", "2": "2"})
    x = torch.randn(5, 4)
    matcher.begin()
    with torch.no_grad():
        teacher(x)
    matcher.after_teacher()
    student(x)
    loss = matcher.loss()
    matcher.remove()
    assert matcher.active() == {"0": "forced", "2": "forced"}
    teacher_input = torch.relu(teacher[0](x)).detach()
    assert any(torch.equal(r, teacher_input) for r in received)
    own_input = torch.relu(student[0](x)).detach()
    assert any(torch.equal(r, own_input) for r in received)
    t_out = teacher[2](teacher_input)
    want_2 = ((student[2](teacher_input) - t_out) ** 2).mean() / t_out.var(unbiased=False)
    want_0 = ((student[0](x) - teacher[0](x)) ** 2).mean() / teacher[0](x).var(unbiased=False)
    assert loss.item() == pytest.approx(((want_0 + want_2) / 2).item(), rel=1e-4)


def test_layerwise_matching_of_a_shrunk_group_uses_its_boundary_output():
    teacher = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5))
    student = nn.Sequential(LMKANLinear(4, 2, num_grids=4), nn.ReLU(), LMKANLinear(2, 5, num_grids=4))
    matcher = LayerMatcher(student, teacher, {"0": "0", "2": "2"})
    x = torch.randn(7, 4)
    matcher.begin()
    t_out = teacher(x).detach()
    matcher.after_teacher()
    s_out = student(x)
    loss = matcher.loss()
    assert matcher.active() == {"2": "output"}
    assert loss.item() == pytest.approx((((s_out - t_out) ** 2).mean() / t_out.var(unbiased=False)).item(), rel=1e-4)


def test_train_lmkan_from_scratch_learns():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=gen)
    y = (x[:, 0] * x[:, 1] > 0).long()
    model = nn.Sequential(LMKANLinear(4, 8, 6, input_norm="batchnorm", preconditioning="relu_first"),
                          LMKANLinear(8, 2, 6, input_norm="batchnorm", preconditioning="relu_first"))
    cfg = TrainConfig(epochs=20, batch_size=32, lr=1e-2, hessian_decay_epochs=2.0, gamma_ramp_epochs=2.0,
                      progress=False)
    result = train_lmkan(model, (x, y), (x, y), cfg)
    assert result.history[-1].val_metric > 0.8
    assert result.history[-1].hessian_lambda < result.history[0].hessian_lambda
    assert model[0].gamma.item() == pytest.approx(0.3)


def test_nonfinite_loss_names_step_and_module_and_keeps_checkpoint(tmp_path):
    student, teacher, data = tiny_problem()

    def poison(step: int) -> None:
        if step == 3:
            with torch.no_grad():
                student[3].table.fill_(math.inf)

    cfg = tiny_config(epochs=2, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*student module '3'") as info:
        distill(student, teacher, data, None, cfg, on_step_end=poison)
    assert "checkpoint.pt" in str(info.value)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 3 and torch.isfinite(saved["model"]["3.table"]).all()


def test_augmented_tensors_augment_training_batches_only():
    x = torch.arange(64, dtype=torch.float32).view(32, 2)
    y = x.sum(1, keepdim=True)
    seen_train, seen_val = [], []

    def negate(batch):
        seen_train.append(batch[0].clone())
        return -batch[0], batch[1]

    model = nn.Linear(2, 1)
    model.register_forward_hook(lambda m, args, out: (seen_val if not m.training else []).append(args[0].clone()))
    cfg = TrainConfig(epochs=1, batch_size=8, task="regression", hessian_start=0.0, gamma_target=None,
                      progress=False)
    train_lmkan(model, AugmentedTensors(x, y, augment=negate), (x, y), cfg)
    assert len(seen_train) == 4  # every training batch went through augment, and each holds rows of x
    assert sorted(torch.cat(seen_train)[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(torch.cat(seen_val), x)  # validation batches are not augmented


def test_tables_get_their_own_learning_rate_and_an_lmkan_student_learns():
    """param_groups: lmKAN tables at lr * table_lr_scale, everything else at lr (the optimizer's groups checked);
    a small lmKAN student distilled with a scaled table LR lowers its loss."""
    from lmkan_surgery.distill.optimizer import param_groups

    student, teacher, data = tiny_problem(n=128)
    cfg = tiny_config(epochs=3, lr=1e-2, table_lr_scale=0.25)
    tables = {m.table for m in student.modules() if isinstance(m, LMKANLinear)}
    params = list(student.parameters())
    groups = param_groups(params, tables, cfg)
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 2.5e-3])
    assert {id(p) for p in groups[1]["params"]} == {id(t) for t in tables}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(params)
    assert len(param_groups([p for p in params if p not in tables], tables, cfg)) == 1  # no empty table group
    result = distill(student, teacher, data, data, cfg)
    losses = [r.loss for r in result.history]
    assert losses[-1] < losses[0] * 0.9, losses
    with pytest.raises(ConfigError, match="table_lr_scale"):
        DistillConfig(table_lr_scale=0.0)
