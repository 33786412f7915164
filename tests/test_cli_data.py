"""The command line's default budget mode and its --data forms (npz, imagefolder, module factory) on tiny fixtures
made here: every run plans, prints the four arms side by side and meets the default 0.5x MACs budget."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmkan_surgery.convert import main
from lmkan_surgery.datasources import import_factory
from lmkan_surgery.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))  # the test_cli:tiny_cnn model factory
BASE = ["--model", "test_cli:tiny_cnn", "--quick"]


def planner_macs_ratio(out: Path) -> float:
    """The planner arm's MACs ratio from arms.md (the table the command line writes)."""
    row = next(line for line in (out / "arms.md").read_text().splitlines() if line.startswith("| planner"))
    return float(re.search(r"\(([0-9.]+)x\)", row).group(1))


def arms_printed(stdout: str) -> bool:
    return all(re.search(rf"^{name}\s", stdout, re.M) for name in ("original", "planner", "prune-only", "int8"))


def test_default_mode_plans_to_half_the_macs(capsys, tmp_path):
    assert main(BASE + ["--input-shape", "1,3,8,8", "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert "plan to 0.5x MACs" in stdout and arms_printed(stdout) and "winners:" in stdout
    assert planner_macs_ratio(tmp_path) <= 0.5
    assert {"arms.md", "plan.txt", "student.pt", "report.json"} <= {p.name for p in tmp_path.iterdir()}


def test_npz_classification_data_with_distillation(capsys, tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 8, 8, generator=gen).numpy()
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(48) % 4)
    argv = BASE + ["--num-classes", "4", "--data", f"npz:{tmp_path / 'd.npz'}", "--distill-epochs", "1",
                   "--budget-macs", "0.4", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert arms_printed(stdout) and "accuracy" in stdout and planner_macs_ratio(tmp_path / "o") <= 0.4


def test_npz_regression_targets_use_rmse(capsys, tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "r.npz", x=x, y=x.mean(axis=(2, 3)))
    assert main(BASE + ["--num-classes", "3", "--data", f"npz:{tmp_path / 'r.npz'}", "--out", str(tmp_path / "o")]) == 0
    assert "RMSE" in capsys.readouterr().out


def test_npz_without_x_and_y_is_a_usage_error(capsys, tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 3)))
    assert main(BASE + ["--data", f"npz:{tmp_path / 'bad.npz'}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must hold arrays named x and y" in err[0]


def test_imagefolder_data(capsys, tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, size=(12, 12, 3), dtype=np.uint8)
            pil.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    argv = BASE + ["--num-classes", "2", "--input-shape", "1,3,8,8", "--data", f"imagefolder:{tmp_path / 'imgs'}",
                   "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert arms_printed(capsys.readouterr().out) and planner_macs_ratio(tmp_path / "o") <= 0.5


def test_module_factory_data(capsys, tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n\n"
        "def make():\n    g = torch.Generator().manual_seed(0)\n"
        "    return (TensorDataset(torch.randn(32, 3, 8, 8, generator=g), torch.arange(32) % 3),\n"
        "            TensorDataset(torch.randn(16, 3, 8, 8, generator=g), torch.arange(16) % 3))\n")
    monkeypatch.chdir(tmp_path)
    assert main(BASE + ["--num-classes", "3", "--data", "module:userdata:make", "--out", str(tmp_path / "o")]) == 0
    assert arms_printed(capsys.readouterr().out)


def test_module_factory_import_leaves_sys_path_as_it_was(tmp_path, monkeypatch):
    """The working directory is on sys.path only while the factory's module imports (found or not), so a checkout's
    folders (kernels/) do not shadow installed packages for the rest of the process."""
    (tmp_path / "userfactory.py").write_text("def make():\n    return 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    assert import_factory("userfactory:make")() == 7
    assert sys.path == before
    with pytest.raises(ConfigError, match="no_such_module"):
        import_factory("no_such_module:make")
    assert sys.path == before
