"""``python -m entropi.host.launch TORCHRUN-ARGS``: torchrun, reporting a failed job in one line.

``entropi run --nproc N`` / ``entropi study --nproc N`` start the job through this module
rather than ``python -m torch.distributed.run`` because torchrun reports a failed job with an
error log line per rank and a ``ChildFailedError`` traceback, after the ranks have printed their
own one-line error. Here the job runs through the same ``torch.distributed.run.run``; a failure
becomes the failed rank's exit status, plus one line of ours only where that rank did not print
its own (it crashed, was killed, or ran out of memory: any status but 2). Restarts
(``--max-restarts``) and torchrun's warnings are as torchrun logs them.
"""

from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from entropi.common.errors import say

CLEAN_EXIT = 2
"""The status ``entropi`` exits with after printing its one-line error."""


def main(argv: list[str] | None = None) -> int:
    # its "failed (exitcode: N) local_rank: ..." lines: the ranks' own errors, or ours, say it
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode == CLEAN_EXIT:
            return CLEAN_EXIT
        how = (
            f"was stopped by signal {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exited with status {failure.exitcode}"
        )
        say(f"entropi: error: rank {rank} of the torchrun job {how} (pid {failure.pid})")
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    return 0


if __name__ == "__main__":
    sys.exit(main())
