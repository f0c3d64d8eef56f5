"""How a benchmark child process runs: one BLAS thread, and the peak RSS of a device command.

What a result records about the machine is :mod:`entropi.common.provenance`."""

from __future__ import annotations

__all__ = ["DEVICE_CLI_PEAK_RSS", "ONE_THREAD"]

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
