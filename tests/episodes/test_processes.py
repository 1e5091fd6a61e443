"""Worker processes die with their parent (:mod:`episodes.processes`), superpixel workers included."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from episodes.processes import PDEATHSIG_SUPPORTED, die_with_parent

LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
_PR_GET_PDEATHSIG = 2


def _report_pdeathsig(parent_pid: int) -> None:
    """Fork child: arm the signal, then exit with the armed signal number (``PR_GET_PDEATHSIG``)."""
    die_with_parent(parent_pid)
    sig = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(_PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    os._exit(sig.value)


@LINUX_ONLY
def test_die_with_parent_arms_sigkill_and_checks_the_parent() -> None:
    assert PDEATHSIG_SUPPORTED
    ctx = multiprocessing.get_context("fork")
    ok = ctx.Process(target=_report_pdeathsig, args=(os.getpid(),))
    ok.start()
    ok.join(30)
    assert ok.exitcode == signal.SIGKILL
    orphan = ctx.Process(target=_report_pdeathsig, args=(os.getpid() + 1,))  # "started by" someone else
    orphan.start()
    orphan.join(30)
    assert orphan.exitcode == 1  # exited at once: its parent is not the one that started it


_SUPERPIXELS = """
from episodes.data.phantom import make_phantom_dataset
from episodes.pseudolabels import compute_dataset_superpixels_with_stats, parallel
parallel._MAIN_PROCESS_COMPUTES = False  # the worker computes everything
vols = make_phantom_dataset(2, modality="CT", shape=(96, 128, 128))  # ~6 s of work
compute_dataset_superpixels_with_stats(vols, cache_dir=None, workers=2, progress=False)
"""


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"PPid:\t{pid}\n" in (entry / "status").read_text():
                out.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _maps_shared_memory(pid: int) -> bool:
    try:
        return "/psm_" in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


@LINUX_ONLY
def test_superpixel_workers_exit_when_the_caller_is_killed() -> None:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SUPERPIXELS], env=env, stderr=subprocess.PIPE)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            children = _children(proc.pid)
            if any(_maps_shared_memory(c) for c in children):
                break
            assert proc.poll() is None, f"finished before the test saw a worker: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no superpixel worker attached to shared memory after 60 s"
            time.sleep(0.05)
        proc.kill()  # a worker (and the resource tracker) run now
        proc.wait(10)
        t0 = time.monotonic()
        while (left := [c for c in children if _running(c)]) and time.monotonic() - t0 < 3:
            time.sleep(0.02)
        assert not left, f"still running {time.monotonic() - t0:.1f} s after SIGKILL of their parent: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in children:
            if _running(child):
                os.kill(child, signal.SIGKILL)
