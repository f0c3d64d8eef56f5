"""``entropi-device``: train, evaluate and use a head on the device (numpy + an interpreter).

The CLI only parses, calls :mod:`.app` and prints JSON; the command table is :data:`COMMANDS`.
The ``train`` flags are generated from :class:`.config.TrainConfig`
(:mod:`entropi.common.cliargs`, as the host CLI's are from its configs), so each setting has one
default and one description. Bad input (any :class:`.errors.EntropiError`, a
missing or unreadable path) is one ``entropi-device CMD: error: ...`` line and exit status 2; a
:class:`.app.DeviceWarning` is one ``warning:`` line. Ctrl-C is one line and exit status 130,
SIGTERM one line and 143.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from entropi.common.cliargs import add_dataclass_arguments, attach_dash_values, dataclass_from_args
from entropi.common.errors import (
    EntropiError,
    Terminated,
    one_line,
    report_bug,
    say,
    sigterm_raises,
)
from entropi.common.provenance import package_version

from .app import WORK_DIR, DeviceWarning, evaluate, predict, train_on_bundle
from .budget import format_size
from .checkpoint import CHECKPOINT_NAME
from .config import TrainConfig

__all__ = ["COMMANDS", "build_parser", "main"]


def _cmd_train(a: argparse.Namespace) -> Any:
    cfg = dataclass_from_args(TrainConfig, a)
    report = train_on_bundle(a.bundle, a.data, a.out, cfg, resume=a.resume, overwrite=a.overwrite)
    summary = report.summary()
    summary["peak"] = format_size(report.peak_bytes)
    return summary


def _cmd_eval(a: argparse.Namespace) -> Any:
    return evaluate(a.bundle, a.head, a.data, split=a.split)


def _cmd_predict(a: argparse.Namespace) -> Any:
    return predict(a.bundle, a.head, a.data, split=a.split, top=a.top)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder (manifest.json + encoder)")
    p.add_argument(
        "--data",
        required=True,
        help=".npz (x_train, y_train, class_names) or image folder (a sub-folder per class)",
    )
    p.add_argument("--out", required=True, help="head folder: head.npz, train.json")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/.work/checkpoint.npz (written with --checkpoint-every N)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the head OUT already holds")
    add_dataclass_arguments(p.add_argument_group("training (TrainConfig)"), TrainConfig)


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder")
    p.add_argument("--head", required=True, help="head folder written by train")
    p.add_argument("--data", required=True, help=".npz or image folder (class folders)")
    p.add_argument("--split", default="test", help="split to use (default test)")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder")
    p.add_argument("--head", required=True, help="head folder written by train")
    p.add_argument(
        "--data", required=True, help="image file, folder of images (flat or class folders), .npz"
    )
    p.add_argument(
        "--split", default="test", help="split of an .npz or split folder (default test)"
    )
    p.add_argument(
        "--top",
        type=int,
        default=1,
        help="classes to list per image, most probable first (default 1)",
    )


#: name -> (help, add-arguments, run)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "train": ("train a head within a memory budget", _add_train, _cmd_train),
    "eval": ("accuracy and loss of a head", _add_eval, _cmd_eval),
    "predict": ("predict the class of images", _add_predict, _cmd_predict),
}


DESCRIPTION = (
    "entropi-device: train, evaluate and use a head on the device (numpy + an interpreter)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropi-device", description=DESCRIPTION)
    parser.add_argument(
        "--version", action="version", version=f"entropi-device {package_version()}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def _interrupted(a: argparse.Namespace) -> str:
    """What an interrupted command left: for ``train``, how to go on from its real folder."""
    if a.command != "train":
        return "nothing was written"
    ckpt = Path(a.out) / WORK_DIR / CHECKPOINT_NAME
    if os.path.isfile(ckpt):
        return f"continue from {ckpt} with the same command and --resume"
    return (
        f"no checkpoint was saved in {a.out} (--checkpoint-every N saves one every N steps); "
        "run the command again"
    )


def _show_warning(show: Callable, command: str) -> Callable:
    """``warnings.showwarning`` that prints a :class:`.app.DeviceWarning` as one line."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeviceWarning):
            say(f"entropi-device {command}: warning: {one_line(message)}")
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; prints JSON; exit status 2 on bad input (one line on stderr), 130
    on Ctrl-C, 143 on SIGTERM (one line each)."""
    args = build_parser().parse_args(attach_dash_values(sys.argv[1:] if argv is None else argv))
    prog = f"entropi-device {args.command}"
    try:
        with sigterm_raises(), warnings.catch_warnings():
            warnings.simplefilter("always", DeviceWarning)
            warnings.showwarning = _show_warning(warnings.showwarning, args.command)
            result = COMMANDS[args.command][2](args)
    except KeyboardInterrupt:
        say(f"\n{prog}: interrupted; {_interrupted(args)}")
        return 130
    except Terminated:
        say(f"{prog}: terminated (SIGTERM); {_interrupted(args)}")
        return 143
    except (EntropiError, OSError) as e:
        say(f"{prog}: error: {one_line(e)}")
        return 2
    except Exception:  # noqa: BLE001 - a bug: its traceback, and a request to report it
        report_bug(prog)
        return 1
    print(json.dumps(result, indent=2, allow_nan=False))  # non-finite numbers: a bug
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
