"""Writing exported models: one .onnx file, or, past protobuf's 2 GB limit (an exact-converted resnet18 already
holds 1.8 GB of tables), the graph in the .onnx file and the initializers in `<name>.onnx.data` beside it
(ONNX external data), which onnx's checker, onnxruntime and session() read the same way."""

from __future__ import annotations

from pathlib import Path

import onnx

from ..atomic import atomic_write_bytes, default_mode

EXTERNAL_DATA_BYTES = 1_800_000_000  # initializer bytes above which tables go to an external data file
EXTERNAL_THRESHOLD = 1024  # tensors smaller than this stay inside the .onnx file


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers (raw and typed storage)."""
    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) if tensor.raw_data else tensor.ByteSize()
    return total


def external_data_path(path: Path) -> Path:
    """Where the external data of `path` goes."""
    return path.with_name(path.name + ".data")


def write_model(model: onnx.ModelProto, path: Path, external_data: bool | None = None) -> Path | None:
    """Check and write `model` to `path` (external data when asked, or automatically past EXTERNAL_DATA_BYTES);
    return the external data file, or None. The model proto may be modified (its tensors moved out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = external_data_path(path)
    if external_data is None:
        external_data = initializer_bytes(model) > EXTERNAL_DATA_BYTES
    if not external_data:
        onnx.checker.check_model(model)
        atomic_write_bytes(path, model.SerializeToString())
        data.unlink(missing_ok=True)  # a stale data file of an earlier, larger export
        return None
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=EXTERNAL_THRESHOLD)
    data.chmod(default_mode())  # onnx creates it private (0600); give it the .onnx file's usual mode
    onnx.checker.check_model(str(path))  # by path: the checker then works past 2 GB
    return data
