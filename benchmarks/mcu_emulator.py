"""Run the C head trainer (:mod:`entropi.device.mcu_trainer`) on an emulated Cortex-M4F.

Everything comes from the package index (the ``mcu`` extra): ``ziglang`` cross-compiles the
trainer for ``thumb-freestanding-eabihf`` / ``cortex_m4+vfp4d16sp`` with the folder's linker
script (FLASH at 0x08000000, SRAM at 0x20000000 of exactly the budget), ``pyelftools`` reads the
image, ``unicorn`` runs it. :class:`Emulator` maps the flash and exactly ``sram_bytes`` of SRAM
and nothing else, puts the stack at the top of SRAM, loads the PT_LOAD segments, and calls the
trainer's functions (arguments in r0-r3, the return address a halt address in flash). Any access
outside the mapped memory stops the run with :class:`McuFault`, so the budget is proven by the
address space; a build whose image does not fit the SRAM fails the link with
:class:`McuBuildError`.

Measured: flash and static RAM from the ELF sections (:class:`Image`), the stack's high-water
mark (the free SRAM is painted before the run and the touched bytes counted), and instructions
per training step (:meth:`Emulator.count_instructions`: a unicorn code hook on a short run;
:meth:`Emulator.count_instructions_fast`, a block hook, bounds it from above within 0.1%).
The time per step at a clock is an estimate (instructions / clock at about one instruction per
cycle), not a measurement.

The emulator packages are imported only when used; the device runtime never imports this module.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from entropi.common.errors import EntropiError
from entropi.device.mcu_trainer import FLASH_ORIGIN, SRAM_ORIGIN, McuTrainer, linker_script
from entropi.device.schedule import batch_rows

__all__ = [
    "CLOCK_HZ",
    "CFLAGS",
    "Emulator",
    "Image",
    "McuBuildError",
    "McuError",
    "McuFault",
    "HostTrainer",
    "TrainerOnMcu",
    "build_elf",
    "build_host",
    "emulate_training",
    "numpy_batches",
]

CFLAGS = (
    "-target", "thumb-freestanding-eabihf", "-mcpu=cortex_m4+vfp4d16sp",
    "-O2", "-std=c99", "-ffreestanding", "-fno-builtin", "-ffp-contract=off", "-nostdlib",
    "-Wall", "-Wextra", "-Werror", "-fno-unwind-tables", "-fno-asynchronous-unwind-tables", "-g0",
)  # fmt: skip
"""The cross-compiler's flags (``python -m ziglang cc``)."""

CLOCK_HZ = 80_000_000
"""The clock of the time estimate (an STM32L4-class Cortex-M4F), at about 1 instruction/cycle."""

_PAINT = b"\xa5"
_PAGE = 4096


class McuError(EntropiError):
    """The emulated Cortex-M4 run of the C head trainer failed."""


class McuBuildError(McuError):
    """The cross-compiler or the linker refused the trainer (e.g. it does not fit the SRAM)."""


class McuFault(McuError):
    """The emulated CPU touched memory outside the mapped flash and SRAM, or did not return."""


def build_elf(
    mcu_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    sram_bytes: int | None = None,
    flash_bytes: int = 1024 * 1024,
) -> Path:
    """Cross-compile ``mcu_dir`` (a folder :func:`.write_mcu_trainer` wrote) into an ELF image
    for the Cortex-M4F, linked for ``sram_bytes`` of SRAM (default: the folder's budget, its
    ``link.ld``). :class:`McuBuildError` with the linker's reason when it does not fit."""
    mcu_dir = Path(mcu_dir)
    out = Path(out) if out is not None else mcu_dir / "head_trainer.elf"
    with tempfile.TemporaryDirectory(prefix="entropi-mcu-") as tmp:
        script = mcu_dir / "link.ld"
        if sram_bytes is not None:
            script = Path(tmp) / "link.ld"
            script.write_text(linker_script(sram_bytes, flash_bytes))
        env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": os.environ.get("ZIG_GLOBAL_CACHE_DIR", tmp)}
        env.setdefault("ZIG_LOCAL_CACHE_DIR", env["ZIG_GLOBAL_CACHE_DIR"])
        cmd = [sys.executable, "-m", "ziglang", "cc", *CFLAGS, "-T", str(script),
               "-Wl,--entry=eh_init", str(mcu_dir / "head_trainer.c"), "-o", str(out)]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        except FileNotFoundError as e:
            raise McuBuildError(f"cannot run the cross-compiler: {e}") from None
    if proc.returncode != 0:
        msg = proc.stderr.strip() or proc.stdout.strip()
        fit = re.search(
            r"section '(\S+)' will not fit in region '(\S+)': overflowed by (\d+) bytes", msg
        )
        if fit:
            raise McuBuildError(
                f"the head trainer does not fit the SRAM: section {fit.group(1)} overflows region "
                f"{fit.group(2)} ({sram_bytes or 'the budget'} B) by {fit.group(3)} B"
            )
        assertion = re.search(r"entropi head trainer: [^\n\"]+", msg)
        if assertion:
            raise McuBuildError(assertion.group(0))
        if "No module named ziglang" in msg:
            raise McuBuildError("the cross-compiler is missing: pip install 'entropi[mcu]'")
        raise McuBuildError(
            f"cross-compiling {mcu_dir} failed: {msg.splitlines()[-1] if msg else proc.returncode}"
        )
    return out


@dataclass
class Image:
    """A linked trainer: its loadable segments, symbols and section sizes."""

    path: Path
    segments: list[tuple[int, bytes, int]]
    """(address, file bytes, memory size) of each PT_LOAD segment, at its run address."""
    symbols: dict[str, int]
    sections: dict[str, tuple[int, int]]
    """Name -> (address, size) of each allocated section."""

    @classmethod
    def read(cls, path: str | os.PathLike) -> Image:
        # lazy: the mcu extra: only when the emulator runs
        from elftools.elf.elffile import ELFFile

        path = Path(path)
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segs = [
                (s["p_vaddr"], s.data(), s["p_memsz"])
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_memsz"]
            ]
            syms = {
                s.name: s["st_value"]
                for s in elf.get_section_by_name(".symtab").iter_symbols()
                if s.name and s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT")
            }
            secs = {
                s.name: (s["sh_addr"], s["sh_size"])
                for s in elf.iter_sections()
                if s["sh_flags"] & 2 and s["sh_size"]  # SHF_ALLOC
            }
        return cls(path, segs, syms, secs)

    @property
    def flash_bytes(self) -> int:
        """Code, constants and the initial values of .data (all stored in flash)."""
        return sum(n for a, n in self.sections.values() if a < SRAM_ORIGIN) + self._sram("data")

    @property
    def static_ram_bytes(self) -> int:
        """.data + .bss: the trainer's static buffers and scalars."""
        return self._sram("data") + self._sram("bss")

    @property
    def static_end(self) -> int:
        """First SRAM address above the static data (where the free SRAM, the stack's, starts)."""
        return max(
            (a + n for a, n in self.sections.values() if a >= SRAM_ORIGIN), default=SRAM_ORIGIN
        )

    def _sram(self, kind: str) -> int:
        return sum(n for name, (a, n) in self.sections.items() if a >= SRAM_ORIGIN and kind in name)


@dataclass
class Emulator:
    """A Cortex-M4F with ``flash_bytes`` of flash and exactly ``sram_bytes`` of SRAM, the image
    loaded and the free SRAM painted. :meth:`call` runs one function of the trainer."""

    image: Image
    sram_bytes: int
    flash_bytes: int = 1024 * 1024
    timeout_s: float = 600.0
    uc: object = field(init=False, repr=False)
    _fault: list = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        # lazy: the mcu extra: only when the emulator runs
        from unicorn import (
            UC_ARCH_ARM,
            UC_HOOK_MEM_INVALID,
            UC_HOOK_MEM_READ,
            UC_HOOK_MEM_WRITE,
            UC_MODE_MCLASS,
            UC_MODE_THUMB,
            Uc,
        )

        # lazy: the mcu extra: only when the emulator runs
        from unicorn import arm_const as arm

        if self.flash_bytes % _PAGE or self.sram_bytes < 1:
            raise McuError(f"flash must be whole 4 KB pages, got {self.flash_bytes} B")
        uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
        uc.ctl_set_cpu_model(arm.UC_CPU_ARM_CORTEX_M4)
        uc.mem_map(FLASH_ORIGIN, self.flash_bytes)
        # unicorn maps whole 4 KB pages: the tail of the last page past the budget is watched
        # and any access to it is a fault, as an unmapped address is
        pages = -(-self.sram_bytes // _PAGE) * _PAGE
        uc.mem_map(SRAM_ORIGIN, pages)
        self.top = SRAM_ORIGIN + self.sram_bytes
        if pages > self.sram_bytes:
            hooks = UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE
            uc.hook_add(hooks, self._on_past_sram, begin=self.top, end=SRAM_ORIGIN + pages - 1)
        self.uc = uc
        for addr, data, memsz in self.image.segments:
            inside = [(FLASH_ORIGIN, FLASH_ORIGIN + self.flash_bytes), (SRAM_ORIGIN, self.top)]
            if not any(lo <= addr and addr + memsz <= hi for lo, hi in inside):
                raise McuError(
                    f"{self.image.path.name} does not load into {self.flash_bytes} B of flash and "
                    f"{self.sram_bytes} B of SRAM: a segment spans 0x{addr:08x}-"
                    f"0x{addr + memsz:08x}"
                )
            uc.mem_write(addr, data + bytes(memsz - len(data)))
        self.halt = FLASH_ORIGIN + self.flash_bytes - 4
        uc.mem_write(self.halt, b"\xfe\xe7\xfe\xe7")  # b . (never run: the emulation stops here)
        uc.reg_write(arm.UC_ARM_REG_FPEXC, 0x40000000)  # FPU on
        uc.hook_add(UC_HOOK_MEM_INVALID, self._on_invalid)
        self.free_start = self.image.static_end
        uc.mem_write(self.free_start, _PAINT * (self.top - self.free_start))

    def _on_invalid(self, uc, access, address, size, value, user_data) -> bool:
        # lazy: the mcu extra: only when the emulator runs
        from unicorn import arm_const as arm

        self._fault.append((access, address, size, uc.reg_read(arm.UC_ARM_REG_PC)))
        return False

    def _on_past_sram(self, uc, access, address, size, value, user_data) -> None:
        # lazy: the mcu extra: only when the emulator runs
        from unicorn import arm_const as arm

        self._fault.append((access, address, size, uc.reg_read(arm.UC_ARM_REG_PC)))
        uc.emu_stop()

    def symbol(self, name: str) -> int:
        try:
            return self.image.symbols[name]
        except KeyError:
            raise McuError(f"{self.image.path.name} has no symbol {name!r}") from None

    def call(self, name: str, *args: int) -> int:
        """Run ``name(*args)`` (up to 4 integer or pointer arguments) to its return; r0."""
        # lazy: the mcu extra: only when the emulator runs
        from unicorn import UcError

        # lazy: the mcu extra: only when the emulator runs
        from unicorn import arm_const as arm

        uc = self.uc
        regs = (arm.UC_ARM_REG_R0, arm.UC_ARM_REG_R1, arm.UC_ARM_REG_R2, arm.UC_ARM_REG_R3)
        for reg, value in zip(regs, args, strict=False):
            uc.reg_write(reg, int(value) & 0xFFFFFFFF)
        uc.reg_write(arm.UC_ARM_REG_SP, self.top)
        uc.reg_write(arm.UC_ARM_REG_LR, self.halt | 1)
        self._fault.clear()
        try:
            uc.emu_start(self.symbol(name) | 1, self.halt, timeout=int(self.timeout_s * 1e6))
        except UcError as e:
            raise self._fault_error(name, e) from None
        if self._fault:  # an access to the tail of the last SRAM page, past the budget
            raise self._fault_error(name, None)
        pc = uc.reg_read(arm.UC_ARM_REG_PC)
        if pc != self.halt:
            raise McuFault(f"{name} did not return within {self.timeout_s:g} s (pc 0x{pc:08x})")
        if self._stack_overflowed():
            raise McuFault(f"{name} {self._overflow_text()}")
        return uc.reg_read(arm.UC_ARM_REG_R0)

    def _stack_overflowed(self) -> bool:
        return bytes(self.uc.mem_read(self.free_start, 4)) != _PAINT * 4

    def _overflow_text(self) -> str:
        return (
            f"overflowed the stack: it used all {self.top - self.free_start} B of SRAM above the "
            f"static data (0x{self.free_start:08x}) and ran into it"
        )

    def _fault_error(self, name: str, e: Exception | None) -> McuFault:
        mapped = (
            f"flash 0x{FLASH_ORIGIN:08x}+{self.flash_bytes} B, SRAM 0x{SRAM_ORIGIN:08x}+"
            f"{self.sram_bytes} B"
        )
        first = f"{name} {self._overflow_text()}; then it " if self._stack_overflowed() else name
        if self._fault:
            _, address, size, pc = self._fault[0]
            return McuFault(
                f"{first} faulted: a {size}-byte access to 0x{address:08x}, outside the mapped "
                f"memory ({mapped}), at pc 0x{pc:08x}"
            )
        return McuFault(f"{first} faulted ({e}); mapped: {mapped}")

    def write(self, addr: int, array: np.ndarray) -> int:
        self.uc.mem_write(addr, np.ascontiguousarray(array).tobytes())
        return addr

    def read(self, addr: int, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(bytes(self.uc.mem_read(addr, n)), dtype).reshape(shape)

    @property
    def stack_high_water(self) -> int:
        """Bytes of the free SRAM (above the static data) ever written since the paint."""
        free = bytes(self.uc.mem_read(self.free_start, self.top - self.free_start))
        untouched = len(free) - len(free.lstrip(_PAINT))
        return len(free) - untouched

    def count_instructions_fast(self, run: Callable[[], object]) -> int:
        """An upper bound on :meth:`count_instructions`, about 15 times faster: a block hook adds
        each executed block's Thumb instructions (decoded once per block: a 32-bit encoding's
        first halfword starts 0b11101, 0b11110 or 0b11111). A block left early (a conditional
        return inside an IT block) is counted whole: 0.05% over on the trainer here."""
        # lazy: the mcu extra: only when the emulator runs
        from unicorn import UC_HOOK_BLOCK

        sizes: dict[tuple[int, int], int] = {}
        total = [0]

        def on_block(uc, address, size, user_data):
            n = sizes.get((address, size))
            if n is None:
                n = sizes[(address, size)] = _thumb_count(bytes(uc.mem_read(address, size)))
            total[0] += n

        self._with_hook(UC_HOOK_BLOCK, on_block, run)
        return total[0]

    def count_instructions(self, run: Callable[[], object]) -> int:
        """Instructions executed by ``run()``, counted by a code hook (called once per executed
        instruction: exact, and slow, about a million instructions a second; a block hook would
        overcount the blocks left early from an IT block's conditional return)."""
        # lazy: the mcu extra: only when the emulator runs
        from unicorn import UC_HOOK_CODE

        total = [0]

        def on_code(uc, address, size, user_data):
            total[0] += 1

        self._with_hook(UC_HOOK_CODE, on_code, run)
        return total[0]

    def _with_hook(self, kind: int, callback, run: Callable[[], object]) -> None:
        """``run()`` with a unicorn hook of ``kind`` installed; the translated blocks are
        flushed around it (a block translated before the hook was added would not call it)."""
        h = self.uc.hook_add(kind, callback)
        self.uc.ctl_flush_tb()
        try:
            run()
        finally:
            self.uc.hook_del(h)
            self.uc.ctl_flush_tb()


def _thumb_count(code: bytes) -> int:
    """Thumb instructions in ``code`` (16- and 32-bit encodings)."""
    n = i = 0
    while i + 1 < len(code):
        i += 4 if (code[i + 1] >> 3) in (0b11101, 0b11110, 0b11111) else 2
        n += 1
    return n


@dataclass
class TrainerOnMcu:
    """The trainer of one folder, built and loaded: :meth:`train_step`, :meth:`predict`,
    :meth:`head`."""

    trainer: McuTrainer
    emu: Emulator
    buffers: dict[str, int] = field(init=False)
    """The addresses of the trainer's buffers, as its accessor functions return them."""

    def __post_init__(self) -> None:
        calls = ("features_buffer", "labels_buffer", "weights", "bias")
        self.buffers = {name: self.emu.call(f"eh_{name}") for name in calls}

    @classmethod
    def load(cls, trainer: McuTrainer, elf: str | os.PathLike, sram_bytes: int | None = None):
        sram = sram_bytes if sram_bytes is not None else trainer.budget_bytes
        return cls(trainer, Emulator(Image.read(elf), sram))

    def init(self, total_steps: int, steps_per_epoch: int) -> None:
        if self.emu.call("eh_init", total_steps, steps_per_epoch) != 0:
            raise McuError(f"eh_init refused total_steps={total_steps}")

    def train_step(self, x: np.ndarray, y: np.ndarray) -> None:
        """One step on a batch written into the trainer's own batch buffers in SRAM."""
        fb = self.emu.write(self.buffers["features_buffer"], np.asarray(x, np.float32))
        lb = self.emu.write(self.buffers["labels_buffer"], np.asarray(y, np.int32))
        if self.emu.call("eh_train_step", fb, lb) != 0:
            raise McuError("eh_train_step refused the batch: a label out of range")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Classes of every row of ``x``, a batch at a time through the SRAM batch buffers."""
        b = self.trainer.plan.batch_size
        out = np.empty(len(x), np.int32)
        for r0 in range(0, len(x), b):
            m = min(b, len(x) - r0)
            fb = self.emu.write(self.buffers["features_buffer"], x[r0 : r0 + m].astype(np.float32))
            lb = self.buffers["labels_buffer"]
            self.emu.call("eh_predict", fb, m, lb)
            out[r0 : r0 + m] = self.emu.read(lb, (m,), np.int32)
        return out

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        t = self.trainer
        w = self.emu.read(self.buffers["weights"], (t.feature_dim, t.num_classes)).copy()
        return w, self.emu.read(self.buffers["bias"], (t.num_classes,)).copy()


def emulate_training(
    trainer: McuTrainer,
    elf: str | os.PathLike,
    batches,
    *,
    total_steps: int,
    steps_per_epoch: int,
    sram_bytes: int | None = None,
) -> TrainerOnMcu:
    """Load ``elf`` into exactly the budget's SRAM (or ``sram_bytes``), ``eh_init`` and run one
    training step per ``(features, labels)`` of ``batches``; the loaded trainer."""
    run = TrainerOnMcu.load(trainer, elf, sram_bytes)
    run.init(total_steps, steps_per_epoch)
    for x, y in batches:
        run.train_step(x, y)
    return run


HOST_CFLAGS = (
    "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffreestanding",
    "-fno-builtin", "-ffp-contract=off",
)  # fmt: skip
"""The host compiler's flags: the trainer must build warning-free as freestanding C99."""


def build_host(
    mcu_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    extra: tuple[str, ...] = ("-fPIC", "-shared", "-nostdlib"),
    sources: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Compile the folder's trainer with the system C compiler (``$CC`` or ``cc``): a shared
    library without libc by default; ``extra`` and more ``sources`` for other builds (a test
    driver with the sanitizers). :class:`McuBuildError` with the compiler's message."""
    mcu_dir, out = Path(mcu_dir), Path(out)
    cc = os.environ.get("CC", "cc")
    cmd = [cc, *HOST_CFLAGS, *extra, f"-I{mcu_dir}", str(mcu_dir / "head_trainer.c"),
           *map(str, sources), "-o", str(out)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError as e:
        raise McuBuildError(f"no C compiler ({cc}): {e}") from None
    if proc.returncode != 0:
        raise McuBuildError(f"{cc} failed on {mcu_dir}: {proc.stderr.strip()[-2000:]}")
    return out


class HostTrainer:
    """The trainer compiled for the host (:func:`build_host`), called through ctypes."""

    def __init__(self, trainer: McuTrainer, library: str | os.PathLike) -> None:

        self.t, self.lib = trainer, ctypes.CDLL(str(library))
        f32, i32, u32 = ctypes.c_float, ctypes.c_int32, ctypes.c_uint32
        pf, pi = ctypes.POINTER(f32), ctypes.POINTER(i32)
        sigs = {
            "eh_init": ([u32, u32], i32),
            "eh_train_step": ([pf, pi], i32),
            "eh_predict": ([pf, u32, pi], None),
            "eh_learning_rate": ([u32], f32),
            "eh_expf": ([f32], f32),
            "eh_get_head": ([pf, pf], None),
            "eh_set_head": ([pf, pf], None),
            "eh_get_momentum": ([pf, pf], None),
            "eh_set_momentum": ([pf, pf], None),
            "eh_get_step": ([], u32),
            "eh_set_step": ([u32], None),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, res
        self._pf, self._pi = pf, pi

    def _f(self, a: np.ndarray):
        return a.ctypes.data_as(self._pf)

    def init(self, total_steps: int, steps_per_epoch: int) -> int:
        return self.lib.eh_init(total_steps, steps_per_epoch)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> int:
        x = np.ascontiguousarray(x, np.float32)
        y = np.ascontiguousarray(y, np.int32)
        return self.lib.eh_train_step(self._f(x), y.ctypes.data_as(self._pi))

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty(len(x), np.int32)
        self.lib.eh_predict(self._f(x), len(x), out.ctypes.data_as(self._pi))
        return out

    def expf(self, x: np.ndarray) -> np.ndarray:
        return np.array([self.lib.eh_expf(float(v)) for v in np.asarray(x, np.float32)], np.float32)

    def _pair(self) -> tuple[np.ndarray, np.ndarray]:
        return np.empty((self.t.feature_dim, self.t.num_classes), np.float32), np.empty(
            self.t.num_classes, np.float32
        )

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        w, b = self._pair()
        self.lib.eh_get_head(self._f(w), self._f(b))
        return w, b

    def momentum(self) -> tuple[np.ndarray, np.ndarray]:
        w, b = self._pair()
        self.lib.eh_get_momentum(self._f(w), self._f(b))
        return w, b

    def set_state(self, head, momentum, step: int) -> None:
        w, b = (np.ascontiguousarray(a, np.float32) for a in head)
        self.lib.eh_set_head(self._f(w), self._f(b))
        vw, vb = (np.ascontiguousarray(a, np.float32) for a in momentum)
        self.lib.eh_set_momentum(self._f(vw), self._f(vb))
        self.lib.eh_set_step(step)


def numpy_batches(x: np.ndarray, y: np.ndarray, n_train: int, batch: int, seed: int, epochs: int):
    """The batches of :func:`entropi.device.trainer.train_head` in its order (each epoch's
    affine order over the first ``n_train`` rows, the last incomplete batch dropped)."""

    for epoch in range(epochs):
        for k in range(n_train // batch):
            rows = batch_rows(seed, epoch, k, batch, n_train)
            yield x[rows], y[rows]
