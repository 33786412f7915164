"""Data safety of lmkan_surgery.save / load: atomic writes (a process killed mid-save leaves the previous file
loadable), per-tensor checksums (a changed byte is refused, naming the tensor), and LMKANError subclasses naming
the file for every kind of bad file or factory."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import lmkan_surgery
from lmkan_surgery import LMKANConfig, LMKANError, ModelError, lmkanify
from lmkan_surgery.errors import SaveFileError

REPO = Path(__file__).resolve().parents[1]


def mlp(width: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))


def saved_student(path: Path, width: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    student, _ = lmkanify(mlp(width), LMKANConfig(num_grids=3), example_inputs=torch.randn(4, 16))
    lmkan_surgery.save(student, path)
    return student


# The child builds a second, different student and saves it over the good file, dying (SIGKILL) part-way through
# the write: MODE=partial kills after the serializer wrote 1000 bytes (deterministic); MODE=race kills from a
# thread as soon as the temp file has bytes on disk (the reproducer, with a real torch.save).
CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time
    from pathlib import Path
    import torch
    from torch import nn
    import lmkan_surgery
    from lmkan_surgery import LMKANConfig, lmkanify

    path, mode, width = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
    student, _ = lmkanify(model, LMKANConfig(num_grids=3), example_inputs=torch.randn(4, 16))
    if mode == "partial":
        def dying_save(obj, f, *args, **kwargs):
            handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
            handle.write(b"x" * 1000)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
    else:
        def killer():
            while True:
                for tmp in path.parent.glob("." + path.name + ".*"):
                    try:
                        if tmp.stat().st_size > 0:
                            os.kill(os.getpid(), signal.SIGKILL)
                    except FileNotFoundError:
                        pass
                time.sleep(0.0002)
        threading.Thread(target=killer, daemon=True).start()
    lmkan_surgery.save(student, path)
    time.sleep(5)  # race mode: the save finished before the thread saw the temp file; the parent accepts both
""")


@pytest.mark.parametrize("mode,width", [("partial", 32), ("race", 256)])
def test_save_killed_mid_write_keeps_the_previous_file(tmp_path, mode, width):
    path = tmp_path / "good.lmkan"
    good = saved_student(path, width)
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), mode, str(width)], env=env, timeout=300,
                          capture_output=True, text=True)
    x = torch.randn(8, 16)
    restored = lmkan_surgery.load(path, lambda: mlp(width)).eval()
    if mode == "partial" or proc.returncode == -signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert path.read_bytes() == before
        with torch.no_grad():
            assert torch.equal(restored(x), good.eval()(x))
    else:  # the save won the race: the new file is complete and loads
        assert proc.returncode == 0, proc.stderr
    if mode == "partial":  # the dead writer's temp file is left, then removed by the next save of the same target
        assert len(list(tmp_path.glob(".good.lmkan.*.tmp"))) == 1
        live = tmp_path / f".good.lmkan.{os.getpid()}.inflight.tmp"  # this process's: maybe another thread's write
        live.write_bytes(b"x")
        saved_student(path, width)
        assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "good.lmkan"]


def test_save_leaves_no_temp_file_and_keeps_the_usual_mode(tmp_path):
    path = tmp_path / "m.lmkan"
    saved_student(path)
    saved_student(path, seed=3)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["m.lmkan"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_changed_tensor_bytes_are_refused_naming_the_tensor(tmp_path):
    path = tmp_path / "m.lmkan"
    student = saved_student(path)
    bias = student.state_dict()["4.bias"].numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(bias)
    assert at >= 0
    data[at + 1] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(SaveFileError, match=r"m\.lmkan.*tensor '4\.bias'.*checksum"):
        lmkan_surgery.load(path, mlp)


@pytest.mark.parametrize("content,what", [(b"", "is empty"), (b"hello, this is a text file\n", "not a readable")]
                         + [(random.Random(seed).randbytes(4096), "not a readable") for seed in range(12)])
def test_bad_files_raise_save_file_error_naming_the_file(tmp_path, content, what):
    path = tmp_path / "bad.lmkan"
    path.write_bytes(content)
    with pytest.raises(SaveFileError, match=f"bad\\.lmkan.*{what}"):
        lmkan_surgery.load(path, mlp)


def test_other_torch_file_and_missing_file(tmp_path):
    other = tmp_path / "weights.pt"
    torch.save(mlp().state_dict(), other)
    with pytest.raises(SaveFileError, match=r"weights\.pt.*not an lmkan_surgery\.save\(\) file"):
        lmkan_surgery.load(other, mlp)
    with pytest.raises(SaveFileError, match=r"nothere\.lmkan: no such save file"):
        lmkan_surgery.load(tmp_path / "nothere.lmkan", mlp)


def test_model_instance_instead_of_factory(tmp_path):
    path = tmp_path / "m.lmkan"
    saved_student(path)
    with pytest.raises(ModelError, match=r"m\.lmkan.*must be a function.*Sequential instance"):
        lmkan_surgery.load(path, mlp())
    assert issubclass(SaveFileError, LMKANError)
