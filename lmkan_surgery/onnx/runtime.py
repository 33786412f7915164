"""onnxruntime sessions for exported lmKAN models: native custom-op library when available, function body otherwise."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import onnx

from .errors import CustomOpLibraryError, OnnxFileError, OnnxRuntimeVersionError
from .library import build_library
from .schema import DOMAIN, OP_TYPE

logger = logging.getLogger(__name__)

MIN_ORT_VERSION = (1, 21)
NATIVE = "native"
FUNCTION_BODY = "function-body"


def check_onnxruntime(version: str | None = None) -> str:
    """Raise OnnxRuntimeVersionError unless onnxruntime (or the given version) is >= 1.21; returns the version."""
    if version is None:
        try:
            import onnxruntime
        except ImportError as err:
            raise OnnxRuntimeVersionError(
                "onnxruntime is not installed: pip install 'onnxruntime>=1.21' (or onnxruntime-gpu>=1.21)"
            ) from err
        version = onnxruntime.__version__
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_ORT_VERSION:
        need = ".".join(map(str, MIN_ORT_VERSION))
        raise OnnxRuntimeVersionError(
            f"onnxruntime {version} is too old: lmKAN models and the lmkan custom-op library need onnxruntime >= "
            f"{need}. Fix: pip install -U 'onnxruntime>={need}' (or onnxruntime-gpu>={need})"
        )
    return version


def has_function_body(model: onnx.ModelProto) -> bool:
    """True when the model carries the lmkan.LMKAN2D function body."""
    return any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions)


def uses_lmkan(model: onnx.ModelProto) -> bool:
    """True when the main graph holds an lmkan.LMKAN2D node."""
    return any(node.domain == DOMAIN and node.op_type == OP_TYPE for node in model.graph.node)


def _all_float32(model: onnx.ModelProto) -> bool:
    """True when every lmkan.LMKAN2D table is float32 (the only type the native kernels take)."""
    types = {init.name: init.data_type for init in model.graph.initializer}
    return all(types.get(node.input[1]) == onnx.TensorProto.FLOAT for node in model.graph.node
               if node.domain == DOMAIN and node.op_type == OP_TYPE)


def _resolve_library(model: onnx.ModelProto, use_library: bool | None,
                     library_path: str | os.PathLike | None) -> Path | None:
    """The library to register, None for the function-body path; raises when a required library is unavailable."""
    if use_library is not False and not _all_float32(model):
        if use_library:
            raise CustomOpLibraryError("the lmkan native kernels take float32 models only: export the model in "
                                       "float32, or pass use_library=False to run the function body")
        logger.info("lmkan: the model is not float32; onnxruntime runs the function body")
        return None
    if library_path is not None:
        path = Path(library_path)
        if not path.is_file():
            raise CustomOpLibraryError(
                f"lmkan custom-op library {path} does not exist: pass library_path=None to build it "
                "(lmkan_surgery.onnx.build_library()), or use_library=False for the function-body path"
            )
        return path
    if use_library is False:
        return None
    try:
        return build_library()
    except CustomOpLibraryError as err:
        if use_library:
            raise
        logger.warning("lmkan: custom-op library unavailable, onnxruntime runs the function body: %s", err)
        return None


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """The ONNX graph of `path` without its external data; OnnxFileError naming the file when it is missing,
    empty, truncated or not ONNX."""
    file = Path(path)
    if not file.is_file():
        raise OnnxFileError(f"{file}: no such ONNX file")
    if file.stat().st_size == 0:
        raise OnnxFileError(f"{file} is empty (an interrupted export or copy?): export it again")
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends carry no path
        raise OnnxFileError(f"{file} is not a readable ONNX model (truncated or damaged?): "
                            f"{type(err).__name__}: {err}") from err
    if not model.graph.node and not model.graph.output:
        raise OnnxFileError(f"{file} parses but holds no graph: not an ONNX model (or truncated)")
    return model


def session(path: str | os.PathLike, providers: list | None = None, *, use_library: bool | None = None,
            library_path: str | os.PathLike | None = None, intra_op_num_threads: int | None = None,
            sess_options=None):
    """An onnxruntime InferenceSession for an exported lmKAN model, with the custom-op library registered.

    use_library: None registers the library when it builds (function body otherwise), True requires it, False
    runs the model-local function body. The session's ``lmkan_path`` says which ("native" or "function-body") and
    ``lmkan_library`` names the library file (or None).
    """
    check_onnxruntime()
    import onnxruntime as ort

    model = read_model(path)
    library = _resolve_library(model, use_library, library_path) if uses_lmkan(model) else None
    options = sess_options if sess_options is not None else ort.SessionOptions()
    if intra_op_num_threads is not None:
        options.intra_op_num_threads = intra_op_num_threads
    if library is not None:
        try:
            options.register_custom_ops_library(str(library))
        except Exception as err:  # onnxruntime raises its own Fail/RuntimeException types
            raise CustomOpLibraryError(
                f"onnxruntime could not load the lmkan library {library}: {err}. Fix: rebuild it (delete the cache "
                "folder) or run with use_library=False"
            ) from err
    elif uses_lmkan(model) and not has_function_body(model):
        raise CustomOpLibraryError(
            f"{path} has lmkan.LMKAN2D nodes without a function body and the lmkan custom-op library is not "
            "loaded: call lmkan_surgery.onnx.session(path) with use_library=None/True (builds the library), or "
            "re-export with export_onnx(..., function_body=True)"
        )
    try:
        sess = ort.InferenceSession(str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's InvalidProtobuf / Fail / RuntimeException: name the file
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxFileError(f"onnxruntime cannot load {path} (truncated or damaged file, or its external data file "
                            f"missing or truncated): {message}") from err
    sess.lmkan_library = library
    sess.lmkan_path = NATIVE if library is not None else FUNCTION_BODY
    if uses_lmkan(model):
        logger.info("lmkan: %s runs lmkan.LMKAN2D via the %s path", path, sess.lmkan_path)
    return sess
