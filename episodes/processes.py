"""Worker processes that do not outlive their parent.

A worker process (DataLoader worker, superpixel worker) calls :func:`die_with_parent` first thing. On
Linux it asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to kill it when its parent dies, even
by ``SIGKILL``, so a killed ``fewshot train`` leaves no worker blocked on a pipe forever (and, once the
workers are gone, multiprocessing's resource tracker sees its pipe close and exits too). Right after
setting it, the worker checks that its parent is still the process that started it: a parent that
died before ``prctl`` would otherwise never deliver the signal.

Limits: the signal is tied to the parent *thread* that created the worker (Linux semantics), so
workers must be started from a thread that lives as long as they are needed (the main thread, as
Lightning and :mod:`episodes.pseudolabels.parallel` do). On other systems (macOS, Windows) there is no
``PR_SET_PDEATHSIG``: :func:`die_with_parent` only performs the start-up check, and workers of a
parent killed later may stay alive until killed by hand.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["PDEATHSIG_SUPPORTED", "Terminated", "die_with_parent"]

#: Whether the kernel can kill a worker when its parent dies (Linux ``PR_SET_PDEATHSIG``).
PDEATHSIG_SUPPORTED = sys.platform.startswith("linux")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's ``KeyboardInterrupt`` so the same clean-up runs (the ``fewshot`` command
    installs the handler; it exits with status 143 where Ctrl-C exits with 130)."""


def _set_pdeathsig(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")


def die_with_parent(parent_pid: int | None) -> None:
    """Make this (worker) process exit when its parent dies; call it first in the worker.

    Args:
        parent_pid: pid of the process that started this one (``os.getpid()`` taken there). When this
            process's parent is no longer ``parent_pid`` (it died before the signal was armed), the
            process exits at once with status 1. ``None`` skips that check (a worker forked by an
            intermediate server, e.g. multiprocessing's ``forkserver``, whose pid the starter does
            not know).
    """
    if PDEATHSIG_SUPPORTED:
        _set_pdeathsig(signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        print(
            f"worker process {os.getpid()}: parent process {parent_pid} is gone; exiting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
