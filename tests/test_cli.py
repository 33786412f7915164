"""The command line: usage errors (exit 2, one line), unavailable features (exit 1, one line), the full quick run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lmkan_surgery.convert import StepFailure, main, optional

ROOT = Path(__file__).resolve().parents[1]


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """A user model for the package.module:factory form."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, num_classes))


def _one_line_error(capsys, code: int, argv: list[str], expected: str) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("argv,expected", [
    (["--model", "resnet_nope"], "is not a torchvision classification model"),
    (["--model", "resnet18", "--input-shape", "1,3,x,4"], "--input-shape must be comma-separated integers"),
    (["--model", "resnet18", "--input-shape", "8"], "at least two positive dimensions"),
    (["--model", "resnet18", "--weights", "no/such/ckpt.pt"], "no such file"),
    (["--model", "resnet18", "--input-shape", "1,1,32,32"], "does not fit resnet18"),
    (["--model", "resnet18", "--num-grids", "1"], "num_grids"),
    (["--model", "nowhere.module:factory"], "cannot import the factory"),
    (["--model", "resnet18", "--mode", "wide"], "invalid choice"),
    (["--input-shape", "1,3,8,8"], "--model"),
], ids=["unknown-model", "bad-shape", "short-shape", "missing-weights", "shape-mismatch", "bad-grid",
        "bad-factory", "bad-mode", "no-model"])
def test_usage_errors_exit_2_with_one_line(capsys, argv, expected):
    _one_line_error(capsys, 2, argv, expected)


def test_missing_optional_feature_is_a_one_line_failure(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lmkan_surgery.onnx", None)  # as without the [onnx] extra
    with pytest.raises(StepFailure, match=r"ONNX export is not available.*lmkan-surgery\[onnx\]"):
        optional("lmkan_surgery.onnx", "ONNX export", "export_onnx", extra="onnx")
    argv = ["--model", "test_cli:tiny_cnn", "--input-shape", "1,3,8,8", "--quick", "--onnx", "m.onnx",
            "--out", str(tmp_path)]
    _one_line_error(capsys, 1, argv, "ONNX export is not available in this build")
    assert (tmp_path / "report.json").is_file() and not (tmp_path / "m.onnx").exists()


def test_weights_are_loaded_and_mismatches_fail(capsys, tmp_path):
    model = tiny_cnn(num_classes=4)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ok.pt")
    torch.save(tiny_cnn(num_classes=3).state_dict(), tmp_path / "bad.pt")
    base = ["--model", "test_cli:tiny_cnn", "--num-classes", "4", "--input-shape", "1,3,8,8", "--quick", "--mode",
            "exact"]
    assert main(base + ["--weights", str(tmp_path / "ok.pt"), "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert f"weights from {tmp_path / 'ok.pt'}" in out and "RANDOMLY" not in out
    saved = torch.load(tmp_path / "ok" / "student.pt", weights_only=True)["state_dict"]
    assert torch.equal(saved["0.weight"], model.state_dict()["0.weight"])  # the stem is kept, with the loaded weights
    _one_line_error(capsys, 1, base + ["--weights", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "bad")],
                    "does not fit the model")


def test_resnet18_quick_run_writes_every_output(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "convert.py"), "--model", "resnet18", "--num-classes", "10",
           "--input-shape", "1,3,32,32", "--data", "synthetic", "--quick", "--num-grids", "4", "--mode", "exact",
           "--exclude", r"layer[234]\..*",  # only layer1 converts: keeps the run short
           "--distill-epochs", "1", "--onnx", "resnet18_lmkan.onnx", "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in ("build:", "calibrate + convert", "distill:", "report:", "ONNX export", "done:"):
        assert step in done.stdout
    assert "RANDOMLY INITIALISED" in done.stdout and "top-1 agreement" in done.stdout
    assert "multiply-adds" in done.stdout and "Traceback" not in done.stderr
    expected = {"config.json", "conversion.json", "student.pt", "report.json", "report.md", "report.png",
                "resnet18_lmkan.onnx"}
    assert expected <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["flop_ratio"] > 1 and report["latency"][0]["batch_size"] == 1
    conversion = json.loads((out / "conversion.json").read_text())
    assert any(row["status"] == "converted" for row in conversion["rows"])


def test_fashion_mnist_data_is_fitted_to_the_input_shape(capsys, tmp_path):
    from lmkan_surgery.errors import DataUnavailableError
    from lmkan_surgery.data import load_fashion_mnist

    try:
        load_fashion_mnist("test", as_dataset=False)
    except DataUnavailableError as err:
        pytest.skip(f"Fashion-MNIST not available here: {err}")
    argv = ["--model", "test_cli:tiny_cnn", "--input-shape", "1,3,16,16", "--data", "fashion-mnist", "--quick",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "on 2 fashion-mnist batches of 8" in capsys.readouterr().out
