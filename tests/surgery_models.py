"""Shared by the surgery tests: small models (control flow, functional F.linear/F.conv2d, MultiheadAttention, MLP)
and the exact-mode acceptance check."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkan_surgery import LMKANConfig, LMKANLayer, lmkanify


class ControlFlowNet(nn.Module):
    """Data-dependent branch at the root (untraceable), a traceable MLP child."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.block = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
        self.pos = nn.Linear(32, 8)
        self.neg = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.block(h)
        if h.sum() > 0:
            return self.pos(h)
        return self.neg(h)


class FunctionalNet(nn.Module):
    """F.linear and F.conv2d on module parameters, two inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(32, 16) / 4)
        self.b1 = nn.Parameter(torch.randn(32) / 4)
        self.w2 = nn.Parameter(torch.randn(32, 32) / 6)
        self.cw = nn.Parameter(torch.randn(8, 3, 3, 3) / 5)
        self.head = nn.Linear(40, 4)

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(x, self.w1, self.b1))
        h = F.linear(h, self.w2)
        c = F.conv2d(img, self.cw, None, 1, 1).mean((2, 3))
        return self.head(torch.cat([h, c], dim=1))


class AttentionNet(nn.Module):
    """Embedding Linear, nn.MultiheadAttention, an MLP and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, h, h)
        h = h + a
        h = h + self.mlp(h)
        return self.head(h.mean(1))


def mlp3(d_in: int = 32, hidden: int = 256, d_out: int = 10) -> nn.Sequential:
    """A 3-layer MLP."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, d_out))


DEFAULT_SKIP = "default skip"
MHA_SKIP = "MultiheadAttention"


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_exact(model: nn.Module, inputs, **config) -> tuple[nn.Module, object]:
    """Convert in exact mode and assert the acceptance properties; returns (student, report)."""
    model.eval()
    before = state(model)
    student, report = lmkanify(model, LMKANConfig(num_grids=3, **config), example_inputs=inputs)
    assert report.validation["rel_error"] < 1e-4, report.validation
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the user's model was modified"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"
    for row in report.rows:
        assert row.reason, row
        if row.status == "skipped":
            assert DEFAULT_SKIP in row.reason or MHA_SKIP in row.reason, row
    converted = set(report.converted_names())
    for name in converted:
        assert isinstance(student.get_submodule(name), LMKANLayer), name
    leftover = {n for n, m in student.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert leftover == {r.name for r in report.rows if r.status == "skipped" and "." + "in_proj" not in r.name}
    return student, report
