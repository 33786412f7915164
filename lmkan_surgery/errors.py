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


class DataUnavailableError(LMKANError, RuntimeError):
    """A data set is neither installed nor fetchable; the message names what to install."""


class NonFiniteLossError(LMKANError, FloatingPointError):
    """Training produced a NaN/Inf loss or gradient; the message names the step and the offending module."""


class CheckpointError(LMKANError, RuntimeError):
    """A checkpoint is missing, unreadable or does not match the model / configuration being resumed."""


class ModelError(LMKANError, TypeError):
    """The object given as a model is not an nn.Module (or a factory returned something else)."""


class SaveFileError(LMKANError, ValueError):
    """A save file is missing, empty, damaged (checksum mismatch) or not an lmkan_surgery.save() file."""


class BatchError(LMKANError, TypeError):
    """A batch does not fit the model's forward (e.g. (x, y) pairs given where model inputs are expected)."""


class ValidationError(ConversionError):
    """A converted model's outputs are non-finite or (exact mode) differ from the original beyond the tolerance;
    the message names the worst layers and their errors."""
