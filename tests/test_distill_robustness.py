"""distill on bad input: teacher/student output shapes that differ are a ShapeError naming both shapes (not a
raw size mismatch), and resuming with other loss weights is refused like another lr; dict inputs are passed as
keyword arguments (the one batch helper)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from lmkan_surgery import LMKANLinear, ShapeError
from lmkan_surgery.distill import distill
from lmkan_surgery.distill import engine
from lmkan_surgery.errors import CheckpointError

from distill_worker import tiny_config, tiny_problem


def test_output_shape_mismatch_names_both_shapes():
    student, teacher, data = tiny_problem()
    wider = nn.Sequential(teacher, nn.Linear(teacher(data[0][:1]).shape[-1], 7))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ShapeError, match=r"student's output \(\d+, \d+\) and the teacher's \(\d+, 7\) differ"):
        distill(student, wider, data, None, tiny_config(epochs=1))
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize("change", [{"alpha": 0.5}, {"beta": 0.0}, {"label_weight": 0.3}, {"temperature": 2.0}])
def test_resume_with_other_loss_weights_is_refused(tmp_path, change):
    student, teacher, data = tiny_problem()
    distill(student, teacher, data, None, tiny_config(epochs=1, checkpoint_dir=str(tmp_path)))
    key = next(iter(change))
    with pytest.raises(CheckpointError, match=f"{key}=.*now {change[key]!r}.*same settings"):
        distill(student, teacher, data, None, tiny_config(epochs=1, checkpoint_dir=str(tmp_path), resume=True,
                                                          **change))


class KeywordData(Dataset):
    """Items ({"features": x}, y): model inputs as keyword arguments."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {"features": self.x[i]}, self.y[i]


class KeywordModel(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


def test_dict_inputs_reach_forward_as_keywords():
    student, teacher, (x, y) = tiny_problem()
    plain = distill(student, teacher, (x, y), None, tiny_config(epochs=1))
    reference = {k: v.clone() for k, v in student.state_dict().items()}
    student, teacher, _ = tiny_problem()
    keyed = distill(KeywordModel(student), KeywordModel(teacher), KeywordData(x, y), None, tiny_config(epochs=1))
    assert [r.loss for r in keyed.history] == pytest.approx([r.loss for r in plain.history], rel=1e-5)
    assert all(torch.allclose(reference[k], v, atol=1e-6) for k, v in student.state_dict().items())
    assert any(isinstance(m, LMKANLinear) for m in student.modules())


class NoisyData(Dataset):
    """Items (x + noise, y): every access draws from torch's RNG, like an augmenting dataset."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1:]), self.y[i]


def test_output_check_draws_nothing_from_the_run(monkeypatch):
    student, teacher, (x, y) = tiny_problem()
    distill(student, teacher, NoisyData(x, y), None, tiny_config(epochs=1))
    checked = {k: v.clone() for k, v in student.state_dict().items()}
    monkeypatch.setattr(engine._Run, "_check_outputs", lambda self: None)
    student, teacher, _ = tiny_problem()
    distill(student, teacher, NoisyData(x, y), None, tiny_config(epochs=1))
    assert all(torch.equal(checked[k], v) for k, v in student.state_dict().items())
