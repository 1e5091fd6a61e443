"""``fewshot`` command line: demo, superpixels, pack, import-weights, pretrain (pretrain-genesis), train, evaluate, segment, study.

Every command has ``--help`` (with defaults and the registered choices). User errors (bad
options, missing or corrupt files, invalid configs) print one line and exit with status 2;
``--verbose`` also prints the traceback. Ctrl-C (SIGINT) exits with status 130 and SIGTERM with 143,
after the same clean-up (``train`` saves ``last.ckpt`` first; rerun the command to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from episodes.processes import Terminated
from fewshot.cli.commands import CLIError, comma_list

__all__ = [
    "CLIError",
    "Terminated",
    "build_parser",
    "comma_list",
    "main",
    "quiet_logs",
    "run_reporting_user_errors",
    "user_error_message",
]

#: Exceptions that mean "the input is wrong" (exit status 2, one line).
USER_ERRORS: tuple[type[BaseException], ...] = (CLIError, OSError, KeyError, ValueError, ImportError)


#: Exit statuses of an interrupted command (128 + the signal number, as a shell reports it).
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _forget_unhandled_interrupt() -> None:
    """Clear CPython's record of a ``KeyboardInterrupt`` that left an ``exec`` of a string.

    Ctrl-C that lands while a string is exec'd (``dataclasses`` and ``typing`` build classes that way while modules
    import) sets a flag that ``python -m`` reads at exit: the process then kills itself with SIGINT (status -2 to
    a parent process) although the interrupt was handled and 130 returned. Every ``exec`` of a string resets that
    flag first, so an empty one clears it.
    """
    exec("")  # an empty string: nothing runs


def build_parser() -> argparse.ArgumentParser:
    """The ``fewshot`` parser (its choices are static lists: building it imports no torch)."""
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
    """The one line shown for a user error (a ``KeyError``'s message without the quotes ``str`` adds, an
    ``OSError``'s without its ``[Errno N]``)."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, OSError) and error.strerror:
        names = [str(n) for n in (error.filename, error.filename2) if n is not None]
        return error.strerror + (f": {' -> '.join(names)}" if names else "")
    return str(error)


def run_reporting_user_errors(prog: str, fn: Callable[[], int], verbose: bool = False) -> int:
    """Run ``fn``; a :data:`USER_ERRORS` exception prints ``"{prog}: error: ..."`` and returns 2.

    Ctrl-C prints ``"{prog}: interrupted"`` and returns 130, SIGTERM (:class:`Terminated`, while
    :func:`main` runs) ``"{prog}: terminated"`` and 143. With ``verbose`` user errors are re-raised
    (traceback). Shared by the ``fewshot`` command and the scripts under ``benchmarks/``.
    """
    try:
        return int(fn())
    except USER_ERRORS as e:
        if verbose:
            raise
        print(f"{prog}: error: {user_error_message(e)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        _forget_unhandled_interrupt()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_logs(args.verbose)
    from fewshot.provenance import git_commit  # here: it imports torch, which --help must not load

    git_commit()  # the commit of the code this process imported, before a long run lets the checkout move on
    # SIGTERM ends a command like Ctrl-C does (status 143), unless the caller installed its own handler.
    catch_term = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL, None
    )
    if catch_term:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return run_reporting_user_errors(f"fewshot {args.command}", lambda: args.func(args), args.verbose)
    finally:
        if catch_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
