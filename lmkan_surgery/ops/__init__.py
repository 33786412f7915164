"""The lmKAN op family (torch.library namespace ``lmkan``), its reference and its backend dispatch."""

from .lookup import check_lookup_inputs, lmkan_lookup, lookup2d_backward_op, lookup2d_op
from .dispatch import release_cpu_output_pool
from .reference import backward_reference, forward_reference

__all__ = [
    "backward_reference",
    "check_lookup_inputs",
    "forward_reference",
    "lmkan_lookup",
    "lookup2d_backward_op",
    "lookup2d_op",
    "release_cpu_output_pool",
]
