"""entropi.device: what runs on the device, with numpy alone (plus an optional interpreter).

- :func:`load_bundle` verifies a bundle (manifest + sha256 of every file) and picks an encoder
  file an installed interpreter can run (LiteRT for .tflite, onnxruntime for .onnx);
  :func:`write_bundle` is what the host calls to make one.
- :func:`extract_features` runs the encoder over images into a shuffled memmap feature store.
- :func:`train_head` trains a softmax-regression head with SGD inside a memory budget
  (:func:`plan_memory`, :func:`parse_size`), measured with tracemalloc.
"""

from .budget import MemoryPlan, format_size, parse_size, plan_memory
from .bundle import Bundle, load_bundle, write_bundle
from .errors import (
    BudgetError,
    BundleError,
    ChecksumError,
    DataError,
    DeviceError,
    EntropiError,
    FormatVersionError,
    ResumeError,
)
from .features import extract_features
from .head import Head, load_head, save_head
from .trainer import TrainConfig, TrainResult, train_head

__all__ = [
    "BudgetError",
    "Bundle",
    "BundleError",
    "ChecksumError",
    "DataError",
    "DeviceError",
    "EntropiError",
    "FormatVersionError",
    "Head",
    "MemoryPlan",
    "ResumeError",
    "TrainConfig",
    "TrainResult",
    "extract_features",
    "format_size",
    "load_bundle",
    "load_head",
    "parse_size",
    "plan_memory",
    "save_head",
    "train_head",
    "write_bundle",
]
