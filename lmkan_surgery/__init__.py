"""lmkan-surgery: replace nn.Linear / nn.Conv2d in any PyTorch model with lookup multivariate KAN layers."""

from .errors import (
    ConfigError,
    ConversionError,
    DeviceError,
    DTypeError,
    GridSizeError,
    KernelBuildError,
    LMKANError,
    ShapeError,
)
from .nn import LMKANConv2d, LMKANLayer, LMKANLinear, hessian_penalty, model_hessian_penalty
from .ops import lmkan_lookup

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConversionError",
    "DTypeError",
    "DeviceError",
    "GridSizeError",
    "KernelBuildError",
    "LMKANConv2d",
    "LMKANError",
    "LMKANLayer",
    "LMKANLinear",
    "ShapeError",
    "hessian_penalty",
    "lmkan_lookup",
    "model_hessian_penalty",
]
