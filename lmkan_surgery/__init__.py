"""lmkan-surgery: replace nn.Linear / nn.Conv2d in any PyTorch model with lookup multivariate KAN layers."""

from .errors import (
    BatchError,
    ConfigError,
    ConversionError,
    DeviceError,
    DTypeError,
    GridSizeError,
    KernelBuildError,
    LMKANError,
    ModelError,
    SaveFileError,
    ShapeError,
)
from .nn import LMKANConv2d, LMKANLayer, LMKANLinear, hessian_penalty, model_hessian_penalty
from .ops import lmkan_lookup, release_cpu_output_pool
from .config import LMKANConfig
from .conversion_report import ConversionReport, LayerRecord, ShrinkGroupRecord
from .api import lmkanify
from .passes.fit import FitResult, fit_tables
from .planning import Budget, PlanResult, plan
from .serialization import load, save

__version__ = "0.1.0"

__all__ = [
    "BatchError",
    "Budget",
    "ConfigError",
    "ConversionReport",
    "ConversionError",
    "FitResult",
    "DTypeError",
    "DeviceError",
    "GridSizeError",
    "KernelBuildError",
    "LMKANConfig",
    "LMKANConv2d",
    "LMKANError",
    "LMKANLayer",
    "LMKANLinear",
    "LayerRecord",
    "ModelError",
    "PlanResult",
    "SaveFileError",
    "ShapeError",
    "ShrinkGroupRecord",
    "fit_tables",
    "hessian_penalty",
    "lmkan_lookup",
    "lmkanify",
    "load",
    "model_hessian_penalty",
    "plan",
    "release_cpu_output_pool",
    "save",
]
