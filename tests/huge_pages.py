"""Test helper shared by the table-placement tests: whether a tensor starts a 2 MB page block."""

import torch

HUGE_PAGE = 2 << 20


def on_huge_block(t: torch.Tensor) -> bool:
    """True where the tensor's data starts on a 2 MB boundary (the placement's huge-page block)."""
    return t.data_ptr() % HUGE_PAGE == 0
