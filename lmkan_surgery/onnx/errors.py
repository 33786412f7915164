"""Errors of the ONNX export and runtime: each names the fix in its message."""

from __future__ import annotations

from ..errors import KernelBuildError, LMKANError


class OnnxExportError(LMKANError, RuntimeError):
    """The model could not be exported to ONNX with one lmkan.LMKAN2D node per lmKAN op."""


class UnsupportedOpsetError(LMKANError, ValueError):
    """The requested ONNX opset is outside the range the export and its function body support."""


class OnnxValidationError(LMKANError, AssertionError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


class OnnxRuntimeVersionError(LMKANError, RuntimeError):
    """The installed onnxruntime is missing or too old for the exported model or the custom-op library."""


class CustomOpLibraryError(KernelBuildError):
    """The onnxruntime custom-op library is missing, cannot be built, or cannot be loaded."""


class OnnxFileError(LMKANError, ValueError):
    """An .onnx file (or its external data) is missing, truncated or not an ONNX model."""
