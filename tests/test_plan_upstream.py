"""Planner pieces for narrow CNNs: every unit count is tried on narrow spaces; a head too wide for a calibration-time
lmKAN block fit gets blocks fitted on the input an upstream (flatten-crossing) space narrows it to, priced at that
input, allowed only together with exactly that upstream narrowing, and built as counted by hand."""

from __future__ import annotations

import torch
from torch import nn

from lmkan_surgery import LMKANLinear
from lmkan_surgery.planning import Budget, block, model_macs, planner
from lmkan_surgery.planning import options as options_module
from lmkan_surgery.planning.options import kept_counts

from plan_helpers import plan

SMALL_LIMIT = 2_500  # a block-fit limit small enough for this test's head to need the upstream narrowing


def wide_head_cnn(seed: int = 0) -> nn.Sequential:
    """conv 1 -> 4 channels on 8x8, Flatten (256 features), Linear -> Tanh -> Linear: under SMALL_LIMIT the head's
    full input (128 pairs x 25 = 3,200 table unknowns at G=4) is too wide for a block fit, 3 or 2 channels (2,400 /
    1,600) are not."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 32), nn.Tanh(),
                         nn.Linear(32, 3)).eval()


def test_narrow_spaces_are_tried_at_every_count():
    assert kept_counts(8, planner.FRACTIONS) == [7, 6, 5, 4, 3, 2]
    assert kept_counts(128, planner.FRACTIONS) == [64, 32, 16, 8, 4]


def test_blocks_on_the_upstream_narrowed_input_are_priced_and_held_to_it(monkeypatch):
    teacher = wide_head_cnn()
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(128, 1, 8, 8, generator=gen) for _ in range(4)]
    seen = {}

    def forced(cost_model, options, limits):
        """Upstream space plain 2/4, head folded on those 2 channels (plain 4/32 in the pruning-only plan)."""
        up, head = options
        plain2 = next(o for o in up if o.kind == "plain" and o.kept == 2)
        folds = {o.upstream: o for o in head if o.kind == "fold"}
        if not folds:
            return [plain2, next(o for o in head if o.kind == "plain" and o.kept == 4)]
        seen.update(folds=folds, up=up, model=cost_model)
        return [plain2, folds[2]]

    monkeypatch.setattr(planner, "choose", forced)
    monkeypatch.setattr(block, "MAX_BLOCK_UNKNOWNS", SMALL_LIMIT)
    monkeypatch.setattr(options_module, "MAX_BLOCK_UNKNOWNS", SMALL_LIMIT)
    monkeypatch.setattr(planner, "PLAN_MARGIN", 1e9)  # keep the forced lmKAN plan whatever it measures
    monkeypatch.setattr(planner, "drop_dominated", lambda opts, options: options)  # and every option it offers
    result = plan(teacher, data, Budget(macs=0.5))
    assert set(seen["folds"]) == {3, 2}  # 4 channels (the full input) are too wide; 3 and 2 are fitted
    model, up = seen["model"], seen["up"]
    keep, plain3 = up[0], next(o for o in up if o.kind == "plain" and o.kept == 3)
    plain2 = next(o for o in up if o.kind == "plain" and o.kept == 2)
    assert not model.consistent([keep, seen["folds"][2]]) and not model.consistent([plain3, seen["folds"][2]])
    assert model.consistent([plain2, seen["folds"][2]]) and model.consistent([plain3, seen["folds"][3]])
    conv_macs = 64 * 9  # per output channel
    assert model.total([plain2, seen["folds"][2]])["macs"] == 2 * conv_macs + 2 * (2 * 64) * 3
    built = result.model
    assert built[0].out_channels == 2 and isinstance(built[3], LMKANLinear) and built[3].in_features == 2 * 64
    assert isinstance(built[5], nn.Identity) and built[3].out_features == 3
    assert model_macs(built, (data[0][:1],)) == 2 * conv_macs + 2 * (2 * 64) * 3
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert built(x).shape == teacher(x).shape
