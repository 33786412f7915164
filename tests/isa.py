"""Test helper shared by the CPU kernel tests: run a block on one instruction-set path of the native library."""

import contextlib

import pytest


@contextlib.contextmanager
def isa_path(native, isa: str):
    """Run the block on one instruction-set path (skipping the test where this CPU lacks it), then back to auto."""
    try:
        native.select_isa(isa)
    except RuntimeError:
        native.select_isa("auto")
        pytest.skip(f"the {isa} path is not supported on this CPU")
    try:
        yield
    finally:
        native.select_isa("auto")
