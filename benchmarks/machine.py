"""What every benchmark result records about the machine it ran on."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable

__all__ = ["DEVICE_CLI_PEAK_RSS", "ONE_THREAD", "cpu_model", "versions"]

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Environment for a child process that must run its BLAS on one thread."""

DEVICE_CLI_PEAK_RSS = (
    "import sys, io\n"
    "from entropi.device.cli import main\n"
    "sys.stdout = io.StringIO()\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "sys.__stdout__.write(hwm + '\\n')\n"
    "sys.exit(rc)\n"
)
"""``python -c`` program: runs ``entropi-device ARGS`` and prints the process's VmHWM (peak RSS
since exec, KiB) as stdout's last line. ru_maxrss of a child is not usable: Linux carries the
high-water RSS across fork+exec, so a child of a torch-loaded process would inherit it."""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def versions(dists: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out
