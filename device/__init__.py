"""entropi.device: what runs on the device, with numpy alone (plus an optional interpreter).

- :func:`load_bundle` verifies a bundle (manifest + sha256 of every file) and picks an encoder
  file an installed interpreter can run (LiteRT for .tflite, onnxruntime for .onnx);
  :func:`write_bundle` is what the host calls to make one.
- :func:`extract_features` runs the encoder over images into a shuffled memmap feature store.
- :func:`train_head` trains a softmax-regression head with SGD inside a memory budget
  (:class:`TrainConfig`, :func:`plan_memory`, :func:`parse_size`), measured with tracemalloc.
- :func:`train_on_bundle`, :func:`evaluate` and :func:`predict` (:mod:`.app`) are the library
  under the ``entropi-device`` CLI: bundle + images in, head + :class:`TrainReport` out.
"""

from entropi.common.errors import EntropiError

from .app import TrainReport, evaluate, predict, train_on_bundle
from .budget import MemoryPlan, format_size, parse_size, plan_memory
from .bundle import Bundle, load_bundle, write_bundle
from .config import TrainConfig, TrainResult
from .errors import (
    BudgetError,
    BundleError,
    ChecksumError,
    DataError,
    DeviceError,
    FormatVersionError,
    ResumeError,
    TrainConfigError,
)
from .features import extract_features
from .head import Head, load_head, save_head
from .trainer import train_head

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
    "TrainConfigError",
    "TrainReport",
    "TrainResult",
    "evaluate",
    "extract_features",
    "format_size",
    "load_bundle",
    "load_head",
    "parse_size",
    "plan_memory",
    "predict",
    "save_head",
    "train_head",
    "train_on_bundle",
    "write_bundle",
]
