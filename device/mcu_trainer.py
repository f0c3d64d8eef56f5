"""The head trainer as C for a microcontroller: :func:`write_mcu_trainer` writes a folder a
firmware compiles beside its own code (TFLite Micro for the encoder, this for the head).

The C sources (``device/c/head_trainer.c`` / ``.h``, shipped as package data) implement the same
method as :class:`.trainer.StepLoop`, step for step: softmax regression, SGD with momentum and
weight decay, the learning-rate schedules of :mod:`.schedule`, float32. They are freestanding C99:
no libc, no libm (``exp`` and ``cos`` are written out; ``eh_expf``'s maximum relative error is
:data:`EXP_MAX_REL_ERROR`), no heap. Every buffer is a static array sized by the device runtime's
own memory plan (:func:`.budget.plan_memory` for the head, the config's batch size, momentum and
budget), which this module emits as constants in ``head_plan.h``: so a budget too small for the
plan is refused here with the planner's :class:`.errors.BudgetError`, naming the smallest budget.

What the C trainer holds is a subset of the plan's buffers (:data:`C_BUFFERS`: no index arrays,
no ones vectors, no history; int32 labels), so its static RAM is at most the plan's
``analytic_bytes``; the plan's reserve (:data:`.budget.RESERVE_BYTES`) is what is left for the
stack and the firmware. Without momentum the plan is the fused update's (no gradient block: the
C loop updates each weight from its dot product), as the numpy runtime's BLAS path plans it.

The folder: ``head_trainer.c``, ``head_trainer.h``, ``head_plan.h`` (generated), ``link.ld`` (an
example linker script: FLASH at 0x08000000, SRAM at 0x20000000 of exactly the budget),
``plan.json`` (the plan, the settings and every file written) and ``README.md`` for firmware
authors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from entropi.common.files import atomic_dir
from entropi.common.provenance import package_version

from .budget import MemoryPlan, format_size, plan_memory
from .bundle import MANIFEST, read_manifest
from .config import TrainConfig
from .errors import DataError, TrainConfigError

__all__ = [
    "not_a_trainer_folder",
    "C_BUFFERS",
    "C_SOURCES",
    "EXP_MAX_REL_ERROR",
    "FLASH_ORIGIN",
    "PLAN_FILE",
    "SRAM_ORIGIN",
    "McuTrainer",
    "c_source",
    "linker_script",
    "mcu_plan",
    "plan_header",
    "write_mcu_trainer",
]

C_SOURCES = ("head_trainer.c", "head_trainer.h")
"""The C files shipped with the package (``device/c/``), copied as they are."""

PLAN_FILE = "plan.json"
"""The record of a written folder: the plan, the settings and every file (:func:`write_mcu_trainer`
replaces only a folder whose ``plan.json`` lists everything in it)."""

EXP_MAX_REL_ERROR = 2e-7
"""``eh_expf``'s maximum relative error against the exact e^x over [-87.3, 88.7] (float32 inputs;
tested against numpy's float64 exp). ``EH_EXP_MAX_REL_ERROR`` in ``head_trainer.h``."""

FLASH_ORIGIN = 0x0800_0000
SRAM_ORIGIN = 0x2000_0000
DEFAULT_FLASH_BYTES = 1024 * 1024
"""The example linker script's flash: code and constants only (the features live elsewhere)."""

MIN_STACK_BYTES = 1024
"""The linker script refuses an image that leaves less SRAM than this above its static data."""

C_BUFFERS = (
    "weights",
    "bias",
    "momentum_weights",
    "momentum_bias",
    "features_batch",
    "logits_batch",
    "row_stat",
    "grad_block",
    "grad_bias",
    "labels_batch",
)
"""The buffers of :func:`.budget.loop_buffers` that ``head_trainer.c`` holds as static arrays
(with the same names); labels as int32."""

_STACK_MESSAGE = (
    f"entropi head trainer: the static buffers leave less than {MIN_STACK_BYTES} B of SRAM "
    "for the stack"
)

_SCALARS_BYTES = 12
"""The C trainer's other static data: the step, the schedule's total steps, steps per epoch."""

_SCHEDULES = {
    "cosine": "EH_SCHEDULE_COSINE",
    "step": "EH_SCHEDULE_STEP",
    "constant": "EH_SCHEDULE_CONSTANT",
}


@dataclass(frozen=True)
class McuTrainer:
    """A head's C trainer: its shape, settings, the plan that sizes it and its static RAM."""

    feature_dim: int
    num_classes: int
    config: TrainConfig
    plan: MemoryPlan
    buffers: dict[str, int]
    """Name -> bytes of each static buffer of ``head_trainer.c`` (:data:`C_BUFFERS` present)."""

    @property
    def momentum(self) -> bool:
        return self.config.momentum > 0

    @property
    def static_bytes(self) -> int:
        """Static RAM of the trainer: its buffers and scalars (at most the plan's buffers)."""
        return sum(self.buffers.values()) + _SCALARS_BYTES

    @property
    def budget_bytes(self) -> int:
        return self.plan.budget_bytes

    def to_dict(self) -> dict:
        return {
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "config": self.config.to_dict(),
            "plan": self.plan.to_dict(),
            "c_buffers": self.buffers,
            "static_bytes": self.static_bytes,
        }


def mcu_plan(
    feature_dim: int, num_classes: int, config: TrainConfig, *, n_train: int | None = None
) -> McuTrainer:
    """The plan of the C trainer for a (``feature_dim``, ``num_classes``) head trained with
    ``config``: :func:`.budget.plan_memory` exactly as :func:`.trainer.train_head` calls it
    (batch at most ``config.batch_size``, and at most ``n_train`` when given; the fused update
    without momentum). :class:`.errors.BudgetError` (naming the smallest budget) when the
    budget cannot hold it; :class:`.errors.TrainConfigError` for settings C cannot take."""
    if config.dtype != "float32":
        raise TrainConfigError(f"the C head trainer is float32; got dtype {config.dtype!r}")
    budget = config.budget_bytes
    if budget is None:
        raise TrainConfigError(
            "the C head trainer needs a memory budget (the SRAM its static buffers must fit), "
            "not 'unlimited'; e.g. budget = \"256KB\""
        )
    d, c = int(feature_dim), int(num_classes)
    if d < 1 or c < 2:
        raise DataError(f"a head needs >= 1 feature and >= 2 classes, got {d} and {c}")
    if n_train is not None and n_train < 1:
        raise DataError(f"n_train must be >= 1, got {n_train}")
    momentum = config.momentum > 0
    plan = plan_memory(
        d,
        c,
        budget,
        max_batch_size=min(config.batch_size, n_train or config.batch_size),
        momentum=momentum,
        dtype=np.float32,
        epochs=config.epochs,
        fused_update=not momentum,
    )
    b, r = plan.batch_size, (0 if plan.fused_update else plan.block_rows)
    sizes = {
        "weights": d * c * 4,
        "bias": c * 4,
        "momentum_weights": d * c * 4 if momentum else 0,
        "momentum_bias": c * 4 if momentum else 0,
        "features_batch": b * d * 4,
        "logits_batch": b * c * 4,
        "row_stat": b * 4,
        "grad_block": r * c * 4,
        "grad_bias": c * 4,
        "labels_batch": b * 4,
    }
    buffers = {k: v for k, v in sizes.items() if v}
    for name, nbytes in buffers.items():  # the C buffers are the plan's, never larger
        if nbytes > plan.buffers.get(name, 0):
            raise AssertionError(f"C buffer {name} ({nbytes} B) is larger than the plan's")
    return McuTrainer(d, c, config, plan, buffers)


def _c_float(x: float) -> str:
    """A float32 literal of C that parses back to ``np.float32(x)``."""
    text = str(np.float32(x))
    if not any(ch in text for ch in ".en"):
        text += ".0"
    return text + "f"


def plan_header(t: McuTrainer) -> str:
    """``head_plan.h``: the plan and the settings as constants of the C trainer."""
    cfg, plan = t.config, t.plan
    lines = [
        "/* Generated by entropi (entropi.device.mcu_trainer) from the device runtime's memory",
        " * plan.",
        f" * Head: {t.feature_dim} features x {t.num_classes} classes, float32; budget "
        f"{format_size(plan.budget_bytes)} ({plan.budget_bytes} B).",
        f" * Static RAM of the trainer: {t.static_bytes} B (the plan's buffers: "
        f"{plan.analytic_bytes} B,",
        f" * plus a {plan.reserve_bytes} B reserve, which is the stack's and the firmware's).",
        " * Do not edit: regenerate with write_mcu_trainer. */",
        "#ifndef ENTROPI_HEAD_PLAN_H",
        "#define ENTROPI_HEAD_PLAN_H",
        "",
        "#define EH_SCHEDULE_COSINE 0",
        "#define EH_SCHEDULE_STEP 1",
        "#define EH_SCHEDULE_CONSTANT 2",
        "",
        "/* the head and the plan */",
        f"#define EH_FEATURES {t.feature_dim}",
        f"#define EH_CLASSES {t.num_classes}",
        f"#define EH_BATCH {plan.batch_size}",
        f"#define EH_BLOCK_ROWS {plan.block_rows}",
        f"#define EH_FUSED_UPDATE {int(plan.fused_update)}",
        f"#define EH_MOMENTUM_BUFFERS {int(t.momentum)}",
        f"#define EH_BUDGET_BYTES {plan.budget_bytes}",
        f"#define EH_PLAN_BYTES {plan.analytic_bytes}",
        f"#define EH_RESERVE_BYTES {plan.reserve_bytes}",
        f"#define EH_STATIC_BYTES {t.static_bytes}",
        "",
        "/* the settings (TrainConfig) */",
        f"#define EH_LR {_c_float(cfg.lr)}",
        f"#define EH_MOMENTUM {_c_float(cfg.momentum)}",
        f"#define EH_WEIGHT_DECAY {_c_float(cfg.weight_decay)}",
        f"#define EH_WEIGHT_DECAY_ON {int(cfg.weight_decay != 0)}",
        f"#define EH_SCHEDULE {_SCHEDULES[cfg.schedule]}",
        f"#define EH_STEP_EPOCHS {cfg.step_epochs}u",
        f"#define EH_GAMMA {_c_float(cfg.gamma)}",
        "",
        "/* bytes of every buffer of the plan (entropi.device.budget.loop_buffers; 0: not held by",
        " * the C trainer, which keeps its labels as int32) */",
    ]
    for name, nbytes in plan.buffers.items():
        lines.append(
            f"#define EH_BUF_{name.upper()}_BYTES {t.buffers.get(name, 0)}  /* plan: {nbytes} */"
        )
    lines += ["", "#endif /* ENTROPI_HEAD_PLAN_H */", ""]
    return "\n".join(lines)


def linker_script(budget_bytes: int, flash_bytes: int = DEFAULT_FLASH_BYTES) -> str:
    """An example GNU ld / lld script: FLASH at 0x08000000, SRAM at 0x20000000 of exactly
    ``budget_bytes``, the stack at the top of SRAM, and an error when the static data leave
    less than :data:`MIN_STACK_BYTES` for it."""
    return f"""/* Generated by entropi: the head trainer's image in exactly the budget's SRAM. */
MEMORY
{{
  FLASH (rx)  : ORIGIN = 0x{FLASH_ORIGIN:08X}, LENGTH = {flash_bytes}
  SRAM  (rwx) : ORIGIN = 0x{SRAM_ORIGIN:08X}, LENGTH = {budget_bytes}
}}
SECTIONS
{{
  .text : {{ *(.text .text.*) }} > FLASH
  .rodata : {{ *(.rodata .rodata.*) }} > FLASH
  .ARM.exidx : {{ *(.ARM.exidx .ARM.exidx.*) }} > FLASH
  .data : {{ __data_start = .; *(.data .data.*) __data_end = .; }} > SRAM AT > FLASH
  .bss (NOLOAD) : {{ __bss_start = .; *(.bss .bss.* COMMON) __bss_end = .; }} > SRAM
  __stack_top = ORIGIN(SRAM) + LENGTH(SRAM);
  ASSERT(__stack_top - __bss_end >= {MIN_STACK_BYTES},
         "{_STACK_MESSAGE}")
  /DISCARD/ : {{ *(.comment) *(.note*) }}
}}
"""


def c_source(name: str) -> str:
    """The text of a shipped C file (:data:`C_SOURCES`)."""
    if name not in C_SOURCES:
        raise ValueError(f"unknown C source {name!r}; shipped: {', '.join(C_SOURCES)}")
    return resources.files(__package__).joinpath("c", name).read_text(encoding="utf-8")


def _readme(t: McuTrainer) -> str:
    plan, cfg = t.plan, t.config
    d, c, b = t.feature_dim, t.num_classes, plan.batch_size
    mom = "with momentum" if t.momentum else "without momentum (the fused update)"
    rows = "\n".join(f"| `{k}` | {v:,} |" for k, v in t.buffers.items())
    return f"""# entropi head trainer for a microcontroller

Trains the softmax-regression head ({d} features x {c} classes, float32) on the device itself,
with the same method and settings as `entropi-device train`: SGD {mom}, lr {cfg.lr:g}
({cfg.schedule} schedule), weight decay {cfg.weight_decay:g}, batches of {b} rows. Freestanding
C99: no libc, no libm, no heap. Generated by entropi {package_version()}.

## Files

- `head_trainer.c`, `head_trainer.h`: the trainer (compile both with your firmware).
- `head_plan.h`: this head's plan and settings (generated; regenerate instead of editing).
- `link.ld`: an example linker script (FLASH 0x08000000, SRAM 0x20000000 of exactly the
  {format_size(plan.budget_bytes)} budget, stack at its top) that proves the image fits.
- `plan.json`: the memory plan and the settings this folder was made with.

## What to call, in order

1. `eh_init(total_steps, steps_per_epoch)`: zeroes the head; `total_steps` = epochs x
   steps per epoch is the length of the learning-rate schedule.
2. For every batch: `eh_train_step(features, labels)` with `EH_BATCH` = {b} rows of
   `EH_FEATURES` = {d} floats (row-major) and {b} int32 labels in [0, {c}). The encoder's
   features can be written straight into `eh_features_buffer()` (and the labels into
   `eh_labels_buffer()`) to skip the copy. It returns -1 and changes nothing when a label is
   out of range. Drop the last incomplete batch of an epoch, and visit the rows in a new order
   every epoch, as the numpy runtime does (`entropi.device.schedule.epoch_order`).
3. `eh_predict(features, n, classes)`: the class of each of n rows (any n).
4. To save and resume: write `eh_weights()` ((D, C) row-major) and `eh_bias()` ((C,)), and
   with momentum `eh_momentum_weights()` / `eh_momentum_bias()`, straight to flash (the budget
   holds no second copy), with `eh_get_step()`; or copy them with `eh_get_head` /
   `eh_get_momentum` where you have the RAM. To resume call `eh_init`, then `eh_set_head`,
   `eh_set_momentum` and `eh_set_step`. Early stopping is yours: score a held-out split with
   `eh_predict` after each epoch and keep the best head.

## RAM and flash

| static buffer | bytes |
|---|---|
{rows}

Static RAM: {t.static_bytes:,} B of the {plan.budget_bytes:,} B budget (the device plan's buffers
take {plan.analytic_bytes:,} B; its {plan.reserve_bytes:,} B reserve is for the stack and your
firmware). The trainer's stack use is small (a few hundred bytes: measured on an emulated
Cortex-M4F by `entropi.benchmarks.mcu_emulator`, see `benchmarks/results/mcu_head.json`), and so
is its code (a few KB of flash at -O2). The features themselves are not in this budget: they
are read from flash or produced by the encoder one batch at a time.

## Building

Your startup code copies `.data` and zeroes `.bss` as usual, and enables the FPU (CPACR) before
the first call, as for any hard-float code.

Compile with `-std=c99 -ffreestanding -fno-builtin -ffp-contract=off -O2` (keep
`-ffp-contract=off`: it gives the same float32 results as the host and the numpy runtime's step
order; `-fno-builtin` keeps the compiler from calling memcpy / memset, which you may link
instead). For a Cortex-M4F, for example with the `ziglang` package:

    python -m ziglang cc -target thumb-freestanding-eabihf -mcpu=cortex_m4+vfp4d16sp \\
        -O2 -std=c99 -ffreestanding -fno-builtin -ffp-contract=off -nostdlib \\
        -T link.ld -Wl,--entry=eh_init head_trainer.c -o head_trainer.elf

`eh_expf` has a maximum relative error of {EXP_MAX_REL_ERROR:g} over [-87.3, 88.7].
"""


def write_mcu_trainer(
    bundle_or_out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    num_classes: int | None = None,
    feature_dim: int | None = None,
    out: str | os.PathLike | None = None,
    n_train: int | None = None,
    flash_bytes: int = DEFAULT_FLASH_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write the C head trainer for a head into a folder and return the folder.

    ``bundle_or_out_dir``: a bundle (its ``manifest.json`` gives ``feature_dim`` and, when it
    records class names, ``num_classes``; the folder goes beside it, ``<bundle>/../mcu``,
    unless ``out`` is given: a bundle holds only what its manifest lists), or the folder to
    write (then ``feature_dim`` and ``num_classes`` are needed). ``config``: the head-training
    settings (default :class:`.config.TrainConfig`, a 256 KB budget). A budget too small is
    :class:`.errors.BudgetError` naming the smallest, before anything is written. The folder
    is written atomically; an existing one is replaced only with ``overwrite`` and only when it
    is one this function wrote.
    """
    config = config or TrainConfig()
    path = Path(bundle_or_out_dir)
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        feature_dim = feature_dim if feature_dim is not None else manifest["feature_dim"]
        names = manifest.get("class_names")
        if num_classes is None and names:
            num_classes = len(names)
        target = Path(out) if out is not None else path.resolve().parent / "mcu"
    else:
        target = Path(out) if out is not None else path
    if feature_dim is None or num_classes is None:
        raise DataError(
            f"the C head trainer for {path} needs feature_dim and num_classes "
            "(a bundle without class names: pass num_classes)"
        )
    t = mcu_plan(feature_dim, num_classes, config, n_train=n_train)
    files = {
        "head_trainer.c": c_source("head_trainer.c"),
        "head_trainer.h": c_source("head_trainer.h"),
        "head_plan.h": plan_header(t),
        "link.ld": linker_script(t.budget_bytes, flash_bytes),
        "README.md": _readme(t),
    }
    record = {"entropi_version": package_version(), **t.to_dict(), "files": sorted(files)}
    with atomic_dir(target, overwrite=overwrite, foreign=not_a_trainer_folder) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / PLAN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return target


def not_a_trainer_folder(path: Path) -> str | None:
    """None when ``path`` is a folder :func:`write_mcu_trainer` wrote (its ``plan.json`` lists
    every other file); otherwise why not."""
    rec = path / PLAN_FILE
    if not rec.is_file() or rec.is_symlink():
        return f"it has no {PLAN_FILE}, so entropi did not write it"
    try:
        listed = set(json.loads(rec.read_text(encoding="utf-8"))["files"]) | {PLAN_FILE}
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {PLAN_FILE} is not one entropi wrote"
    others = sorted(p.name for p in path.iterdir() if p.name not in listed)
    return f"it holds files {PLAN_FILE} does not list ({', '.join(others[:5])})" if others else None
