"""ONNX export of lmKAN models (one lmkan.LMKAN2D node per op, standard-op function body) and onnxruntime sessions."""

from .errors import (
    CustomOpLibraryError,
    OnnxExportError,
    OnnxFileError,
    OnnxRuntimeVersionError,
    OnnxValidationError,
    UnsupportedOpsetError,
)
from .export import (
    DEFAULT_RTOL,
    SUPPORTED_OPSETS,
    ExportResult,
    ValidationCase,
    ValidationReport,
    check_opset,
    export_onnx,
    validate_onnx,
)
from .library import build_library, include_dir
from .runtime import FUNCTION_BODY, NATIVE, check_onnxruntime, session
from .schema import DOMAIN, OP_TYPE, function_body, op_schema

__all__ = [
    "CustomOpLibraryError",
    "DEFAULT_RTOL",
    "DOMAIN",
    "ExportResult",
    "FUNCTION_BODY",
    "NATIVE",
    "OP_TYPE",
    "OnnxExportError",
    "OnnxFileError",
    "OnnxRuntimeVersionError",
    "OnnxValidationError",
    "SUPPORTED_OPSETS",
    "UnsupportedOpsetError",
    "ValidationCase",
    "ValidationReport",
    "build_library",
    "check_onnxruntime",
    "check_opset",
    "export_onnx",
    "function_body",
    "include_dir",
    "op_schema",
    "session",
    "validate_onnx",
]
