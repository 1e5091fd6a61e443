"""Run independent jobs side by side: in this process (``jobs=1``) or in spawned worker processes.

Used by :func:`fewshot.recipes.fit` and :func:`fewshot.recipes.cross_validate` to train a recipe's member runs.
Each worker process runs one job at a time with a fixed number of torch threads (the digits of a training run
depend on its thread count, so a recipe states it) and writes everything it prints to the job's log file; the
caller sees the last line of every running job's log every ``poll_s`` seconds. This is a queue for one machine;
on a cluster, hand each member run to the scheduler instead (``fewshot fit --member I``).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Job", "available_cores", "run_jobs"]


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args)`` in a process with ``threads`` torch threads, its output in ``log``."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    log: Path
    threads: int | None = None


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _with_threads(threads: int | None, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def _in_worker(job: Job) -> Any:
    """A worker process: all output to the job's log, ``job.threads`` torch threads."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(job.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    from fewshot.cli import quiet_logs

    quiet_logs()
    print(f"== {job.name}: {job.threads or 'default'} torch thread(s), load {load_average()}", flush=True)
    return _with_threads(job.threads, job.fn, job.args)


def last_line(path: Path) -> str:
    """The last non-empty line of a log (its last 4 KiB; progress bars end lines with carriage returns)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.replace("\r", "\n").split("\n") if ln.strip()]
    return lines[-1] if lines else ""


def run_jobs(
    jobs: Sequence[Job],
    *,
    parallel: int,
    on_done: Callable[[int, Any], None],
    poll_s: float = 60.0,
    say: Callable[[str], None] = print,
) -> None:
    """Run ``jobs``; ``on_done(i, result)`` is called in this process as each one finishes.

    ``parallel == 1``: one after another in this process (output to the terminal). ``parallel > 1``: up to
    ``parallel`` at once, each in a spawned process. A job that fails stops the queue: jobs not started are
    cancelled, running ones finish (their ``on_done`` is called), then a ``RuntimeError`` names the job and its log.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if parallel == 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            say(f"== {job.name} ({job.threads or 'default'} torch thread(s), load {load_average()})")
            on_done(i, _with_threads(job.threads, job.fn, job.args))
        return
    failure: tuple[int, BaseException] | None = None
    shown: dict[int, str] = {}
    with cf.ProcessPoolExecutor(min(parallel, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures: dict[cf.Future[Any], int] = {}
        for i, job in enumerate(jobs):
            job.log.parent.mkdir(parents=True, exist_ok=True)
            job.log.write_text("")
            futures[pool.submit(_in_worker, job)] = i
            say(f"== {job.name}: queued, log {job.log}")
        waiting = set(futures)
        while waiting:
            done, waiting = cf.wait(waiting, timeout=poll_s, return_when=cf.FIRST_COMPLETED)
            for future in done:
                i = futures[future]
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except BaseException as err:  # re-raised below, once the running jobs have finished
                    if failure is None:
                        failure = (i, err)
                        for other in waiting:
                            other.cancel()
                        say(f"   {jobs[i].name} failed: {err}; waiting for the running jobs")
                    continue
                on_done(i, result)
            for future in waiting:
                i = futures[future]
                line = last_line(jobs[i].log)
                if future.running() and line and line != shown.get(i):
                    shown[i] = line
                    say(f"   [{jobs[i].name}] {line}")
    if failure is not None:
        bad, error = failure
        message = f"{jobs[bad].name} failed: {error}; its log: {jobs[bad].log}"
        if isinstance(error, (ValueError, OSError, KeyError)):  # a user error stays one (one line, exit 2)
            raise ValueError(message) from error
        raise RuntimeError(message) from error
