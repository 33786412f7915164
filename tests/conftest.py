"""Shared pytest configuration: every test starts from the same seed; `native` is the compiled CPU extension."""

import pytest
import torch

from lmkan_surgery.errors import KernelBuildError
from lmkan_surgery.kernels import build


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def native():
    """The compiled CPU extension (built on first use); skipped only when there is no compiler at all."""
    try:
        return build.load_native("cpu")
    except KernelBuildError as err:
        if "no C++ compiler" in str(err):
            pytest.skip(str(err))
        raise


@pytest.fixture
def native_backend(monkeypatch):
    """Unset a forced backend (LMKAN_BACKEND) so layers run on the native binding, e.g. for its table placement."""
    monkeypatch.delenv("LMKAN_BACKEND", raising=False)
