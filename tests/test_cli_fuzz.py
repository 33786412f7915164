"""Fuzz of the command line's argument handling: every documented option with a bad value exits 2 with exactly one
line on stderr naming the option or the file, before any model is converted; weights files that are not state_dicts
are named and never answered with a weights_only=False suggestion; a large student is announced before writing."""

from __future__ import annotations

import os

import pytest
import torch

from lmkan_surgery import convert
from lmkan_surgery.convert import main

MODEL = ["--model", "test_cli:tiny_cnn", "--input-shape", "1,3,8,8"]

BAD = {
    "model-empty": (["--model", ""], "--model"),
    "model-unknown": (["--model", "resnet_nope"], "resnet_nope"),
    "num-classes-0": (MODEL + ["--num-classes", "0"], "--num-classes"),
    "num-classes-neg": (MODEL + ["--num-classes", "-3"], "--num-classes"),
    "num-classes-text": (MODEL + ["--num-classes", "ten"], "--num-classes"),
    "input-shape-text": (["--model", "resnet18", "--input-shape", "a,b"], "--input-shape"),
    "input-shape-zero": (["--model", "resnet18", "--input-shape", "1,0,8,8"], "--input-shape"),
    "mode": (MODEL + ["--mode", "fast"], "--mode"),
    "width-exact": (MODEL + ["--mode", "exact", "--width", "0.1"], "--width 0.1 only applies to --mode shrink"),
    "width-zero": (MODEL + ["--mode", "shrink", "--width", "0"], "width"),
    "width-big": (MODEL + ["--mode", "shrink", "--width", "7"], "width"),
    "width-nan": (MODEL + ["--mode", "shrink", "--width", "nan"], "--width"),
    "width-text": (MODEL + ["--mode", "shrink", "--width", "half"], "--width"),
    "num-grids-1": (MODEL + ["--num-grids", "1"], "num_grids"),
    "num-grids-huge": (MODEL + ["--num-grids", "100000"], "num_grids"),
    "num-grids-text": (MODEL + ["--num-grids", "eight"], "--num-grids"),
    "exclude-regex": (MODEL + ["--exclude", "layer[0"], "--exclude"),
    "exclude-type": (MODEL + ["--exclude", "Conv3D"], "--exclude: config.exclude names layer type 'Conv3D'"),
    "exclude-empty": (MODEL + ["--exclude"], "--exclude"),
    "data": (MODEL + ["--data", "imagenet"], "--data"),
    "data-kind": (MODEL + ["--data", "hdf5:x.h5"], "--data"),
    "data-npz-missing": (MODEL + ["--data", "npz:no/such.npz"], "--data"),
    "data-npz-empty-path": (MODEL + ["--data", "npz:"], "--data"),
    "data-imagefolder-missing": (MODEL + ["--data", "imagefolder:no/such"], "--data"),
    "data-module-form": (MODEL + ["--data", "module:nocolon"], "--data"),
    "data-module-import": (MODEL + ["--data", "module:no_such_pkg.data:make"], "--data"),
    "budget-macs-zero": (MODEL + ["--budget-macs", "0"], "--budget-macs"),
    "budget-macs-big": (MODEL + ["--budget-macs", "1.5"], "--budget-macs"),
    "budget-macs-nan": (MODEL + ["--budget-macs", "nan"], "--budget-macs"),
    "budget-macs-text": (MODEL + ["--budget-macs", "half"], "--budget-macs"),
    "budget-bytes-neg": (MODEL + ["--budget-bytes", "-0.5"], "--budget-bytes"),
    "budget-latency-big": (MODEL + ["--budget-latency", "3"], "--budget-latency"),
    "budget-latency-shrink": (MODEL + ["--mode", "shrink", "--budget-latency", "0.5"], "--budget-latency only"),
    "budget-macs-exact": (MODEL + ["--mode", "exact", "--budget-macs", "0.5"], "--budget-macs only applies"),
    "width-budget": (MODEL + ["--width", "0.5"], "--width 0.5 only applies to --mode shrink"),
    "distill-epochs-neg": (MODEL + ["--distill-epochs", "-1"], "--distill-epochs"),
    "distill-epochs-text": (MODEL + ["--distill-epochs", "two"], "--distill-epochs"),
    "onnx-dir": (MODEL + ["--onnx", "."], "--onnx"),
    "seed-neg": (MODEL + ["--seed", "-5"], "--seed"),
    "seed-text": (MODEL + ["--seed", "x"], "--seed"),
    "quick-value": (MODEL + ["--quick=yes"], "--quick"),
    "traceback-value": (MODEL + ["--traceback=1"], "--traceback"),
    "unknown-option": (MODEL + ["--widht", "0.5"], "--widht"),
    "weights-missing": (MODEL + ["--weights", "no/such.pt"], "no such file"),
}


def one_line_exit_2(capsys, argv: list[str], expected: str) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0] and "Traceback" not in captured.err
    assert not captured.out.strip()  # no step ran
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_option_values_exit_2_with_one_line(capsys, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    argv, expected = BAD[case]
    one_line_exit_2(capsys, argv + ["--out", str(tmp_path / "out")], expected)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file(capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    one_line_exit_2(capsys, MODEL + ["--out", str(tmp_path / "taken")], "--out")


@pytest.mark.parametrize("kind", ["random", "undecodable", "text", "empty", "pickled-model", "list"])
def test_weights_files_that_are_not_state_dicts(capsys, tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(os.urandom(2048))
    elif kind == "undecodable":  # a pickle string that is not UTF-8 (~2% of random files fail this way)
        path.write_bytes(b"\x80\x02X\x02\x00\x00\x00\xff\xfe.")
    elif kind == "text":
        path.write_text("epoch 3: accuracy 0.91\n" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickled-model":
        from test_cli import tiny_cnn

        torch.save(tiny_cnn(), path)  # a whole module: not loadable with weights_only=True
    else:
        torch.save([torch.zeros(2)], path)
    line = one_line_exit_2(capsys, MODEL + ["--weights", str(path), "--out", str(tmp_path / "o")], str(path))
    assert "weights_only" not in line and "UnicodeDecodeError" not in line
    if kind == "pickled-model":
        assert "model.state_dict()" in line


def test_large_student_is_announced_before_writing(capsys, tmp_path, monkeypatch):
    from lmkan_surgery import LMKANConfig, lmkanify
    from test_cli import tiny_cnn

    student, _ = lmkanify(tiny_cnn(), LMKANConfig(num_grids=3), example_inputs=torch.randn(1, 3, 8, 8))
    seen = []
    real_save = convert.save
    monkeypatch.setattr(convert, "save", lambda model, path: (seen.append(capsys.readouterr().out),
                                                               real_save(model, path)))
    monkeypatch.setattr(convert, "LARGE_STUDENT_BYTES", 1000)
    convert.save_student(student, tmp_path / "student.pt")
    assert "writing a" in seen[0] and "GB student to" in seen[0] and str(tmp_path / "student.pt") in seen[0]
    monkeypatch.setattr(convert, "LARGE_STUDENT_BYTES", 10**12)
    convert.save_student(student, tmp_path / "student.pt")
    assert seen[1] == "" and (tmp_path / "student.pt").is_file()

