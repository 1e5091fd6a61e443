"""``fewshot`` command line: demo, superpixels, pretrain-genesis, train, evaluate, segment, study.

Every command has ``--help`` (with defaults and the registered choices). User errors (bad
options, missing or corrupt files, invalid configs) print one line and exit with status 2;
``--verbose`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from fewshot.cli.commands import CLIError, comma_list

__all__ = [
    "CLIError",
    "build_parser",
    "comma_list",
    "main",
    "quiet_logs",
    "run_reporting_user_errors",
    "user_error_message",
]

#: Exceptions that mean "the input is wrong" (exit status 2, one line).
USER_ERRORS: tuple[type[BaseException], ...] = (CLIError, OSError, KeyError, ValueError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    """The ``fewshot`` parser (imported lazily: the registries it lists import torch)."""
    from fewshot.cli.parser import build_parser as build

    return build()


class _DropLightningTips(logging.Filter):
    """Drops Lightning's promotional "💡 Tip" records (litlogger, litmodels); keeps its device lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().lstrip().startswith("💡 Tip")


_DROP_TIPS = _DropLightningTips()


def quiet_logs(verbose: bool = False) -> None:
    """INFO logging without Lightning's tips and torch's LeafSpec notice (the CLI and the benchmarks use it)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # A logger's filters see the records logged on it, so the filter sits where Lightning logs them.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DROP_TIPS)
    if not verbose:
        # Lightning 2.6 still builds torch's deprecated LeafSpec; torch warns once per use.
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
            module=r"pytorch_lightning\.utilities\._pytree",
        )


def user_error_message(error: BaseException) -> str:
    """The one line shown for a user error (a ``KeyError``'s message without the quotes ``str`` adds)."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def run_reporting_user_errors(prog: str, fn: Callable[[], int], verbose: bool = False) -> int:
    """Run ``fn``; a :data:`USER_ERRORS` exception prints ``"{prog}: error: ..."`` and returns 2.

    Ctrl-C prints ``"{prog}: interrupted"`` and returns 130. With ``verbose`` user errors are re-raised
    (traceback). Shared by the ``fewshot`` command and the scripts under ``benchmarks/``.
    """
    try:
        return int(fn())
    except USER_ERRORS as e:
        if verbose:
            raise
        print(f"{prog}: error: {user_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_logs(args.verbose)
    return run_reporting_user_errors(f"fewshot {args.command}", lambda: args.func(args), args.verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
