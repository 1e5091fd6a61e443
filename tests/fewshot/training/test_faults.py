"""Process faults of ``fewshot train``: SIGKILL (workers, checkpoints, exact resume) and two runs in one ``--out``."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from episodes.atomic import remove_stale_temps
from episodes.data.volumes import Volume
from fewshot.checkpoint import load_checkpoint
from fewshot.cli import main
from fewshot.config import ExperimentConfig
from fewshot.training import train
from fewshot.training.checkpoint_io import AtomicCheckpointIO
from fewshot.training.data import _worker_init
from fewshot.training.lock import LOCK_NAME, OutputInUseError, train_lock
from tests.fewshot.training.states import assert_same_training_state, logged_rows

REPO = Path(__file__).resolve().parents[3]
LINUX_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux-only"
)

#: The issue's command: the phantom, tiny model, 2 DataLoader workers, far more steps than the test runs.
TRAIN_ARGS = [
    "train",
    "--config",
    "demo_phantom",
    "--steps",
    "2000",
    "--workers",
    "2",
    "--set",
    "data.loader_args={n_subjects: 6, shape: [12, 64, 64]}",
    "--set",
    "data.size=64",
    "--set",
    "model.backbone.name=cbr-tiny",
    "--set",
    "model.backbone.truncate=block2",
    "--set",
    "model.head.feature_dim=8",
    "--set",
    "train.accelerator=cpu",
    "--set",
    "train.progress_bar=false",
]


# ------------------------------------------------------------------------- /proc helpers (Linux)


def _stat(pid: int) -> tuple[int, str, str] | None:
    """``(ppid, state, start time)`` of a live or zombie process, ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), rest[0], rest[19]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def descendants(root: int) -> dict[int, str]:
    """``{pid: start time}`` of every live descendant of ``root``."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[1] != "Z":
            parents.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[2]
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def still_running(procs: dict[int, str]) -> list[int]:
    """The pids of ``procs`` that are the same process (start time) and not a zombie."""
    return [pid for pid, start in procs.items() if (st := _stat(pid)) and st[2] == start and st[1] != "Z"]


def kill_leftovers(procs: dict[int, str]) -> None:
    """Clean-up after a failure: SIGKILL the processes of ``procs`` still running."""
    for pid in still_running(procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------------ SIGKILL


@LINUX_ONLY
def test_sigkill_of_train_leaves_no_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    log_path = tmp_path / "train.log"
    seen: dict[int, str] = {}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fewshot", *TRAIN_ARGS, "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while True:  # DataLoader workers: forked children, same command line as the trainer
            seen.update(descendants(proc.pid))
            cmd = _cmdline(proc.pid)  # read here: right after Popen it can still be the pre-exec fork
            workers = [p for p in seen if (st := _stat(p)) and st[0] == proc.pid and _cmdline(p) == cmd]
            if len(workers) >= 2:
                break
            assert proc.poll() is None, f"train exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no DataLoader workers after 60 s:\n{log_path.read_text()}"
            time.sleep(0.1)
        time.sleep(0.5)  # let the workers fill their queues (where they used to block forever)
        seen.update(descendants(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.monotonic()
        while (left := still_running(seen)) and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        assert not left, f"still running {elapsed:.1f} s after SIGKILL of train: {left} (of {sorted(seen)})"
        print(f"{len(seen)} descendants of the killed train gone {elapsed:.2f} s after SIGKILL")
        with train_lock(out):  # the OS released the killed run's lock
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(seen)


class _Draws(Dataset[torch.Tensor]):
    """Each item: one draw from numpy's, Python's and torch's global generators (in a worker)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        legacy = np.random.random()  # noqa: NPY002 - the global generator is what worker seeding sets
        return torch.tensor([legacy, random.random(), torch.rand(()).item()], dtype=torch.float64)


def _draws(init_fn: Any) -> torch.Tensor:
    torch.manual_seed(0)  # the loader's base seed
    return torch.cat(list(DataLoader(_Draws(), batch_size=1, num_workers=2, worker_init_fn=init_fn)))


def test_worker_init_keeps_lightning_worker_seeding() -> None:
    lightning = _draws(partial(pl_worker_init_function, rank=0))  # what Lightning adds without ours
    ours = partial(_worker_init, parent_pid=os.getpid(), rank=0)
    torch.testing.assert_close(_draws(partial(ours, seed_workers=True)), lightning, rtol=0, atol=0)
    assert not torch.equal(_draws(partial(ours, seed_workers=False)), lightning)


# ---------------------------------------------------------------------------------- checkpoints


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle this")


def test_failed_checkpoint_write_keeps_previous_file(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(100_000), "bad": _Unpicklable()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
    assert io.load_checkpoint(path)["global_step"] == 1
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, path, storage_options={"x": 1})
    with pytest.raises(ValueError, match="local files only"):
        io.save_checkpoint({}, "s3://bucket/last.ckpt")


def test_remove_stale_temps(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.0a1b2c3d.tmp"
    other = tmp_path / ".other.ckpt.0a1b2c3d.tmp"
    for p in (target, stale, other):
        p.write_bytes(b"x")
    assert remove_stale_temps(target) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, target.name]
    assert remove_stale_temps(tmp_path / "missing" / "last.ckpt") == []


# ------------------------------------------------------------------------------ the output lock


def _hold_lock(out: Path) -> int:
    """Lock ``out`` like a running train (this process's pid in the file); returns the fd."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class _UsesAtomicIO(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_second_train_in_same_out_fails_at_once(
    volumes: list[Volume], tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_config: Callable[..., ExperimentConfig]) -> None:
    out = tmp_path / "run"
    fd = _hold_lock(out)
    try:
        message = (
            f"another fewshot train (pid {os.getpid()}) is using {out}; wait for it or choose another --out"
        )
        with pytest.raises(OutputInUseError) as info:
            train(tiny_config(out, steps=2), volumes=volumes)
        assert str(info.value) == message
        assert not (out / "config.yaml").exists()  # failed before writing anything
        assert main(["train", "--dataset", "phantom-ct", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"fewshot train: error: {message}"
    finally:
        os.close(fd)
    stale = out / "checkpoints" / ".last.ckpt.0a1b2c3d.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"truncated")
    result = train(tiny_config(out, steps=2), volumes=volumes, callbacks=[_UsesAtomicIO()])
    assert result.steps == 2 and Path(str(result.checkpoint)).is_file()
    assert not stale.exists()  # removed under the lock
    assert (out / LOCK_NAME).read_text() == ""  # released: holder pid cleared
    os.close(_hold_lock(out))  # and lockable again


def test_lock_messages_and_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    with train_lock(out) as path:
        assert path == out / LOCK_NAME and path.read_text().strip() == str(os.getpid())
        monkeypatch.setenv("LOCAL_RANK", "1")  # a rank-1 process started by a launcher shares the folder
        with train_lock(out) as other:
            assert other is None
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(OutputInUseError, match=rf"pid {os.getpid()}\) is using"):
            with train_lock(out):
                pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    fd = _hold_lock(out)
    try:
        os.pwrite(fd, dead.stdout.ljust(16), 0)
        with pytest.raises(OutputInUseError, match=r"exited; processes it started still hold the lock"):
            with train_lock(out):
                pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------- SIGINT / SIGTERM (issue 39)


def default_sigint() -> None:
    """``preexec_fn`` of a child that the test interrupts: Ctrl-C's default action. A shell starts a background job
    (``.ci/run &``, ``nohup``) with SIGINT ignored, every child inherits that, and Python then installs no
    ``KeyboardInterrupt`` handler: the signal would be ignored by the command, as the convention wants, and the test
    would measure how it was launched instead of the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child_env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout (``PYTHONPATH`` starts with the repository)."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _start(args: list[str], tmp_path: Path, log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = _child_env()
    log_path = tmp_path / log_name
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fewshot", *args], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
            preexec_fn=default_sigint,
        )
    return proc, log_path


def _signal_when(
    proc: subprocess.Popen[bytes], log_path: Path, ready: Callable[[], object], sig: int, timeout: float = 120
) -> dict[int, str]:
    """Send ``sig`` once ``ready()`` (within ``timeout`` s); wait for the exit; return the descendants seen (to check
    for orphans)."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while not ready():
        seen.update(descendants(proc.pid))
        assert proc.poll() is None, f"exited ({proc.returncode}) before the signal:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not ready after {timeout:g} s:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.1)
    seen.update(descendants(proc.pid))
    proc.send_signal(sig)
    proc.wait(timeout=60)
    t0 = time.monotonic()
    while still_running(seen) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    return seen


#: Documented exit statuses (``fewshot --help``): Ctrl-C 130, SIGTERM 143; SIGKILL is the OS's -9.
SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


@LINUX_ONLY
@pytest.mark.slow
@pytest.mark.parametrize(("sig", "status", "word"), SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_during_train_saves_last_ckpt_and_resumes_exactly(
    tmp_path: Path, sig: int, status: int, word: str
) -> None:
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    args = [*TRAIN_ARGS, "--set", "train.ckpt_every=3", "--out", str(out)]
    proc, log_path = _start(args, tmp_path, "train.log")
    seen: dict[int, str] = {}
    try:  # while it trains: after the first checkpoint (step 3), the workers long forked
        seen = _signal_when(proc, log_path, last.is_file, sig)
        text = log_path.read_text()
        assert proc.returncode == status, text[-3000:]
        assert f"fewshot train: {word}" in text and "Traceback" not in text, text[-3000:]
        assert not still_running(seen), f"processes left after {sig!r}: {still_running(seen)}"
        step = int(load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"])  # saved on the way out
        assert not list((out / "checkpoints").glob("last-v*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(seen)
    if sig != signal.SIGTERM:
        return
    # resume: the interrupted run continued to step + 2 equals a fresh run of step + 2 steps
    target = str(step + 2)
    steps_at = TRAIN_ARGS.index("--steps") + 1
    resumed_args = [*TRAIN_ARGS[:steps_at], target, *TRAIN_ARGS[steps_at + 1 :], "--set", "train.num_workers=0"]
    assert main([*resumed_args, "--out", str(out)]) == 0
    assert main([*resumed_args, "--out", str(tmp_path / "fresh")]) == 0
    a = load_checkpoint(out / "checkpoints" / "last.ckpt")
    b = load_checkpoint(tmp_path / "fresh" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == step + 2
    assert_same_training_state(b, a, "after the SIGTERM and resume")


@LINUX_ONLY
@pytest.mark.slow
@pytest.mark.parametrize(("sig", "status", "word"), SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_during_superpixels_and_evaluate(tmp_path: Path, sig: int, status: int, word: str) -> None:
    seen: dict[int, str] = {}
    for attempt in range(3):  # the job takes ~5 s: on a loaded machine it can end before the signal lands
        cache = tmp_path / f"cache{attempt}"
        args = ["superpixels", "--dataset", "phantom-ct", "--workers", "2", "--cache", str(cache)]
        proc, log_path = _start(args, tmp_path, f"superpixels{attempt}.log")
        seen = _signal_when(proc, log_path, lambda p=log_path: re.search(rb"superpixels: [1-9]", p.read_bytes()), sig)
        if proc.returncode != 0 or "superpixels: 100%" not in log_path.read_text():
            break
        kill_leftovers(seen)  # finished first: the race was lost, not the behaviour under test
    try:  # once slices are done, the worker processes long started (a signal inside a fork can be lost)
        text = log_path.read_text()
        assert proc.returncode == status and f"fewshot superpixels: {word}" in text, text[-3000:]
        assert "Traceback" not in text and not still_running(seen), text[-3000:]
        assert not list(cache.glob(".*.tmp")) if cache.is_dir() else True  # no half-written entry left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(seen)
    # evaluate: a tiny model (trained here, 2 steps), interrupted while it loads or scores
    run = tmp_path / "run"
    train_args = [*TRAIN_ARGS, "--set", "train.num_workers=0", "--out", str(run)]
    train_args[train_args.index("--steps") + 1] = "2"
    assert main(train_args) == 0
    out = tmp_path / "ev"
    args = ["evaluate", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--out", str(out), "--overlays", "0"]
    proc, log_path = _start(args, tmp_path, "evaluate.log")
    try:
        seen = _signal_when(proc, log_path, lambda: (out / ".evaluate.lock").is_file(), sig)
        text = log_path.read_text()
        assert proc.returncode == status and f"fewshot evaluate: {word}" in text, text[-3000:]
        assert "Traceback" not in text and not still_running(seen), text[-3000:]
        assert not (out / "results.json").exists()  # no partial results
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(seen)


INTERRUPTED_IN_EXEC = """import os, signal, sys
from fewshot.cli import run_reporting_user_errors

def job():  # Ctrl-C inside an exec'd string, as when it lands while dataclasses build a class during an import
    exec("os.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(10 ** 8): pass")
    return 0

sys.exit(run_reporting_user_errors("job", job))
"""


@LINUX_ONLY
def test_ctrl_c_inside_an_exec_string_still_exits_130(tmp_path: Path) -> None:
    """``python -m`` of a command interrupted while a string is exec'd exits 130, not killed by SIGINT (-2).

    CPython records a ``KeyboardInterrupt`` that leaves an ``exec`` of a string and, under ``-m``, re-raises SIGINT
    at exit even when the interrupt was handled; a signal that landed while ``fewshot evaluate`` imported its
    modules ended that way. Fails without ``_forget_unhandled_interrupt`` (returncode -2)."""
    (tmp_path / "interrupted").mkdir()
    (tmp_path / "interrupted" / "__main__.py").write_text(INTERRUPTED_IN_EXEC)
    proc = subprocess.run(
        [sys.executable, "-m", "interrupted"], cwd=tmp_path, env=_child_env(), capture_output=True, text=True, timeout=120,
        preexec_fn=default_sigint,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr.strip()) == (130, "job: interrupted"), proc.stderr[-3000:]


# ------------------------------------------------------------------ exact resume after SIGKILL (issue 44)

#: 10 steps in bf16-mixed with 2 DataLoader workers, ``last.ckpt`` every 2 steps, the learning rate decayed every 3
#: (a resume crosses a decay), every step logged.
EXACT_ARGS = [
    *TRAIN_ARGS,
    "--set", "train.precision=bf16-mixed",
    "--set", "train.ckpt_every=2",
    "--set", "optim.lr_step=3",
    "--set", "train.log_every=1",
]  # fmt: skip
EXACT_ARGS[EXACT_ARGS.index("--steps") + 1] = "10"


@LINUX_ONLY
@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tmp_path: Path) -> None:
    """A run killed (SIGKILL: no handler, no final save) once its step-4 checkpoint is on disk, then resumed to
    step 10, ends in the same bits as an uninterrupted run of 10 steps: every weight and buffer, every
    optimiser tensor (momentum), the learning-rate schedule and Lightning's loop counters (``torch.equal`` /
    ``==``), the step count, the final losses, and the logged history of every step (the killed run's rows
    before its checkpoint, then the resumed run's), with 2 DataLoader workers and bf16-mixed autocast.

    Fails if the resumed sampler starts one step off (``start_step=step + 1`` in
    ``EpisodeDataModule.train_dataloader``), if an episode's seed mixes in the worker's global numpy state
    (which depends on how many episodes that worker made before), if the optimiser state is dropped on load
    (momentum restarts from zero), or if the resumed run trains in 32-true instead of bf16-mixed.
    """
    out, fresh = tmp_path / "killed", tmp_path / "fresh"
    last = out / "checkpoints" / "last.ckpt"
    killed_log = out / "logs" / "version_0" / "metrics.csv"
    steps: dict[int, int] = {}  # last.ckpt's mtime -> its global step (read once per write)

    def global_step() -> int:
        mtime = last.stat().st_mtime_ns
        if mtime not in steps:
            steps[mtime] = int(load_checkpoint(last)["global_step"])
        return steps[mtime]

    def checkpointed() -> bool:
        """``last.ckpt`` at step >= 4 and the row of its last step logged (Lightning writes it after the save)."""
        if not last.is_file() or (step := global_step()) < 4:
            return False
        return killed_log.is_file() and step - 1 in logged_rows(killed_log)

    proc, log_path = _start([*EXACT_ARGS, "--out", str(out)], tmp_path, "killed.log")
    seen: dict[int, str] = {}
    try:
        # about 15 s on an idle machine; far longer when the 2 cores are shared
        seen = _signal_when(proc, log_path, checkpointed, signal.SIGKILL, timeout=300)
        assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(seen)
    killed_at = global_step()
    assert 4 <= killed_at < 10, f"killed at step {killed_at}"
    history = {step: row for step, row in logged_rows(killed_log).items() if step < killed_at}
    assert sorted(history) == list(range(killed_at))

    assert main([*EXACT_ARGS, "--out", str(out)]) == 0  # resumes from last.ckpt
    assert main([*EXACT_ARGS, "--out", str(fresh)]) == 0
    resumed, uninterrupted = (json.loads((run / "train_result.json").read_text()) for run in (out, fresh))
    assert resumed["resumed_from"] == str(last) and resumed["steps_run"] == 10 - killed_at
    assert resumed["steps"] == uninterrupted["steps"] == 10 and resumed["losses"] == uninterrupted["losses"]
    a, b = load_checkpoint(fresh / "checkpoints" / "last.ckpt"), load_checkpoint(last)
    for ckpt in (a, b):  # trained as the test means
        assert ckpt["fewshot"]["precision"] == "bf16-mixed"
        assert ckpt["fewshot"]["config"]["train"]["num_workers"] == 2
    assert_same_training_state(a, b, f"after the SIGKILL at step {killed_at} and the resume")
    resumed_rows = logged_rows(out / "logs" / "version_1" / "metrics.csv")
    assert sorted(resumed_rows) == list(range(killed_at, 10))
    assert {**history, **resumed_rows} == logged_rows(fresh / "logs" / "version_0" / "metrics.csv")
