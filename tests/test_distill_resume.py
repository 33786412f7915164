"""distill checkpoints: an interrupted-then-resumed run equals an uninterrupted one; 2-process DDP equals 1 process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lmkan_surgery import LMKANLinear
from lmkan_surgery.distill import AugmentedTensors, TrainConfig, distill, train_lmkan
from lmkan_surgery.errors import CheckpointError

from distill_worker import tiny_config, tiny_problem


class _Interrupt(Exception):
    pass


def _interrupt_at(step_to_stop: int):
    def callback(step: int) -> None:
        if step == step_to_stop:
            raise _Interrupt
    return callback


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), rtol=0, atol=1e-6), key


def test_resumed_distill_matches_uninterrupted_run(tmp_path):
    student, teacher, data = tiny_problem()
    full = distill(student, teacher, data, data, tiny_config(epochs=3, checkpoint_dir=str(tmp_path / "a")))
    reference = student.state_dict()

    student, teacher, data = tiny_problem()
    cfg = tiny_config(epochs=3, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=4)
    with pytest.raises(_Interrupt):
        distill(student, teacher, data, data, cfg, on_step_end=_interrupt_at(10))  # mid-epoch 1, last ckpt step 8
    student, teacher, data = tiny_problem()  # a fresh process would rebuild everything
    cfg = tiny_config(epochs=3, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=4, resume=True)
    resumed = distill(student, teacher, data, data, cfg)
    _assert_same_state(student.state_dict(), reference)
    assert resumed.steps == full.steps
    assert [r.loss for r in resumed.history] == pytest.approx([r.loss for r in full.history], abs=1e-6)
    again = distill(student, teacher, data, data, cfg)  # a finished checkpoint: nothing left to do
    assert again.steps == full.steps


@pytest.mark.parametrize("hessian_every", [1, 2])  # 2: the checkpoint at step 3 holds the gradient of step 2
def test_resume_restores_dropout_and_augmentation_rng_in_train_lmkan(tmp_path, hessian_every):
    def build() -> nn.Module:
        torch.manual_seed(7)
        return nn.Sequential(LMKANLinear(4, 8, 4, preconditioning="relu_first"), nn.Dropout(0.3),
                             LMKANLinear(8, 2, 4, preconditioning="relu_first"))

    gen = torch.Generator().manual_seed(1)
    data = AugmentedTensors(torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen),
                            augment=lambda batch: (batch[0] + 0.1 * torch.randn_like(batch[0]), batch[1]))
    cfg = dict(epochs=2, batch_size=16, hessian_decay_epochs=1.0, hessian_every=hessian_every, progress=False)
    model = build()
    train_lmkan(model, data, None, TrainConfig(**cfg))
    reference = model.state_dict()
    model = build()
    with pytest.raises(_Interrupt):
        train_lmkan(model, data, None, TrainConfig(**cfg, checkpoint_dir=str(tmp_path), checkpoint_every=3),
                    on_step_end=_interrupt_at(5))
    model = build()
    train_lmkan(model, data, None, TrainConfig(**cfg, checkpoint_dir=str(tmp_path), checkpoint_every=3, resume=True))
    _assert_same_state(model.state_dict(), reference)


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path):
    student, teacher, data = tiny_problem()
    distill(student, teacher, data, None, tiny_config(epochs=1, checkpoint_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match="epochs"):
        distill(student, teacher, data, None, tiny_config(epochs=2, checkpoint_dir=str(tmp_path), resume=True))


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    worker = Path(__file__).with_name("distill_worker.py")
    out = tmp_path / "ddp.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(worker.parent), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    student, teacher, data = tiny_problem(torch.float64)
    distill(student, teacher, data, data, tiny_config())
    _assert_same_state(torch.load(out, weights_only=True), student.state_dict())
