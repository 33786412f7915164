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


def on_avx512_and_avx2(native, run):
    """run() on the AVX-512 path, then on the AVX2 path (skipping the test where this CPU lacks one): both results,
    for the tests that hold the 16-lane code to the 8-lane code's bits."""
    results = []
    for isa in ("avx512", "avx2"):
        with isa_path(native, isa):
            results.append(run())
    return tuple(results)
