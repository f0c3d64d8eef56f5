"""``entropi-device``: train, evaluate and use a head on the device (numpy + an interpreter).

The CLI only parses, calls :mod:`.app` and prints JSON; the command table is :data:`COMMANDS`.
The ``train`` flags are generated from :class:`.config.TrainConfig` (:mod:`.cliargs`), so each
setting has one default and one description. Bad input (any :class:`.errors.EntropiError`, a
missing or unreadable path) is one ``entropi-device CMD: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from .app import evaluate, predict, train_on_bundle
from .budget import format_size
from .cliargs import add_dataclass_arguments, dataclass_from_args
from .config import TrainConfig
from .errors import EntropiError, one_line, report_bug, say

__all__ = ["COMMANDS", "build_parser", "main"]


def _cmd_train(a: argparse.Namespace) -> Any:
    cfg = dataclass_from_args(TrainConfig, a)
    report = train_on_bundle(a.bundle, a.data, a.out, cfg, resume=a.resume)
    summary = report.summary()
    summary["peak"] = format_size(report.peak_bytes)
    return summary


def _cmd_eval(a: argparse.Namespace) -> Any:
    return evaluate(a.bundle, a.head, a.data, split=a.split)


def _cmd_predict(a: argparse.Namespace) -> Any:
    return predict(a.bundle, a.head, a.data, split=a.split, top=a.top)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder (manifest.json + encoder)")
    p.add_argument("--data", required=True, help=".npz (x_train/y_train) or image folder")
    p.add_argument("--out", required=True, help="head folder: head.npz, train.json")
    p.add_argument("--resume", action="store_true", help="resume from OUT/.work/checkpoint.npz")
    add_dataclass_arguments(p.add_argument_group("training (TrainConfig)"), TrainConfig)


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle folder")
    p.add_argument("--head", required=True, help="head folder written by train")
    p.add_argument("--data", required=True, help=".npz or image folder")
    p.add_argument("--split", default="test", help="split to use (default test)")


def _add_predict(p: argparse.ArgumentParser) -> None:
    _add_eval(p)
    p.add_argument("--top", type=int, default=1, help="classes to list per image (default 1)")


#: name -> (help, add-arguments, run)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "train": ("train a head within a memory budget", _add_train, _cmd_train),
    "eval": ("accuracy and loss of a head", _add_eval, _cmd_eval),
    "predict": ("predict the class of images", _add_predict, _cmd_predict),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropi-device", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; prints JSON; exit status 2 on bad input (one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command][2](args)
    except (EntropiError, OSError) as e:
        say(f"entropi-device {args.command}: error: {one_line(e)}")
        return 2
    except Exception:  # noqa: BLE001 - a bug: its traceback, and a request to report it
        report_bug(f"entropi-device {args.command}")
        return 1
    print(json.dumps(result, indent=2, allow_nan=False))  # non-finite numbers: a bug
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
