"""The exception hierarchy: every error the toolkit raises on bad input is an LMKANError subclass."""

from __future__ import annotations


class LMKANError(Exception):
    """Base class of every error raised by lmkan_surgery."""


class GridSizeError(LMKANError, ValueError):
    """The number of grid intervals G is not an int in the supported range."""


class ShapeError(LMKANError, ValueError):
    """A tensor has the wrong number of dimensions or the wrong size along one."""


class DTypeError(LMKANError, TypeError):
    """A tensor has a dtype the op or layer does not support."""


class DeviceError(LMKANError, ValueError):
    """Tensors that must share a device do not, or the device has no implementation."""


class KernelBuildError(LMKANError, RuntimeError):
    """A native kernel could not be built or loaded (missing compiler, failed compilation)."""


class ConversionError(LMKANError, RuntimeError):
    """A model could not be converted (untraceable, bad config, bad example inputs)."""


class ConfigError(LMKANError, ValueError):
    """A configuration names something unknown or holds an invalid value."""
