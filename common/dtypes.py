"""The encoder's dtypes, the int8 acceptance threshold and the pruning methods, spelled once for
every layer.

An encoder file is ``float32``, or ``int8`` (full integer, calibrated on real images). A run's
``[export] quantize`` and the host CLI's ``--quantize`` say which files to make: ``"none"``
(float32 files only) or ``"int8"`` (int8 files too); a file, a bundle and a row of the
deployment table say ``dtype``. :data:`QUANTIZE_DTYPE` is the one translation between the two
spellings. Plain Python: the config reads this module before torch is imported.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MIN_COSINE",
    "DEFAULT_QUANTIZE",
    "DTYPES",
    "PRUNE_METHODS",
    "QUANTIZE",
    "QUANTIZE_DTYPE",
]

DTYPES: tuple[str, ...] = ("float32", "int8")
"""The dtypes an encoder file can have."""

QUANTIZE: tuple[str, ...] = ("none", "int8")
"""What ``quantize`` may be: ``none`` (float32 files only) or ``int8`` (also full-integer files)."""
DEFAULT_QUANTIZE = "none"
"""float32 files only, unless int8 is asked for."""

QUANTIZE_DTYPE: dict[str, str] = {"none": "float32", "int8": "int8"}
"""The dtype of the encoder a ``quantize`` setting deploys (``none``: the float32 files)."""

DEFAULT_MIN_COSINE = 0.99
"""The lowest mean cosine of int8 to float features on real images an int8 file may have (an
export's, the MCU form's and ``[export] min_cosine``'s default)."""

PRUNE_METHODS: tuple[str, ...] = ("magnitude", "channel")
"""How a ladder's rungs were pruned (``[prune] method``, a rung record's ``method``)."""
