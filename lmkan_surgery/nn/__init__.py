"""Drop-in lmKAN modules: LMKANLinear and LMKANConv2d, and the Hessian regularizer."""

from .base import LMKANLayer
from .conv import LMKANConv2d
from .conv1d import LMKANConv1d
from .hessian import hessian_penalty, model_hessian_penalty
from .linear import LMKANLinear

__all__ = ["LMKANConv1d", "LMKANConv2d", "LMKANLayer", "LMKANLinear", "hessian_penalty", "model_hessian_penalty"]
