"""Where a deployed encoder runs (torch-free: configs validate ``[deploy] runtime`` with it)."""

from __future__ import annotations

__all__ = ["MCU_FORM", "RUNTIMES"]

RUNTIMES = ("litert", "tflm")
"""Where the encoder runs: ``litert`` (LiteRT on a Linux board: every form, the RAM rule of the
graph) or ``tflm`` (TensorFlow Lite Micro on a microcontroller: the MCU form only, RAM = the
arena TFLM's recording allocator measures)."""
MCU_FORM = "mcu"
"""The form of the ``tflm`` rows: dead channels removed, weights dense, NHWC input
(:mod:`entropi.export.mcu`); TFLite Micro has no DENSIFY kernel, so no sparse form runs."""
