"""The shared-memory process scheduler that computes superpixel slices in parallel.

:func:`compute_parallel` copies every slice to compute into one shared float32 buffer and allocates
one shared int32 output buffer; the calling process and ``workers - 1`` spawned processes then
claim chunks of slices (tasks) from a shared counter until none is left, so no array is pickled and
the calling process computes while the workers start up. An exception in a worker stops all of them
and is re-raised in the caller with its original type (or as a ``RuntimeError`` carrying the
worker's traceback when it cannot be pickled). Workers exit when the calling process dies
(:func:`episodes.processes.die_with_parent`).
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Sequence
from multiprocessing import get_context
from typing import Any

import numpy as np

from ..processes import die_with_parent
from ..progress import Progress
from .algorithms import superpixels_into

__all__ = ["compute_parallel", "shm_free_bytes"]

#: Whether the calling process also computes slices when worker processes are used (tests turn it off
#: to force every chunk through a worker).
_MAIN_PROCESS_COMPUTES = True


# A task is (element offset of its first slice in the shared buffers, slices, H, W, threshold, spacing).
_Task = tuple[int, int, int, int, float, tuple[float, float, float]]


def _claim(counter: Any, n_tasks: int) -> int:
    with counter.get_lock():
        index = int(counter.value)
        if index < n_tasks:
            counter.value = index + 1
    return index


def _run_claimed(
    flat_in: np.ndarray,
    flat_out: np.ndarray,
    tasks: Sequence[_Task],
    counter: Any,
    done: Any,
    method: str,
    kw: dict[str, Any],
    on_done: Any = None,
    scaling: str = "minmax",
    body_connectivity: int = 4,
) -> None:
    """Claim and compute tasks (slices of the flat float32 input into the flat int32 output) until none
    is left; ``on_done()`` is called after each task."""
    while (index := _claim(counter, len(tasks))) < len(tasks):
        start, z, h, w, threshold, spacing = tasks[index]
        stop = start + z * h * w
        superpixels_into(
            flat_in[start:stop].reshape(z, h, w), flat_out[start:stop].reshape(z, h, w), threshold, method, kw,
            spacing, scaling, body_connectivity,
        )
        done[index] = 1
        if on_done is not None:
            on_done()


def _shared_worker(
    parent_pid: int | None,
    in_name: str,
    out_name: str,
    total: int,
    tasks: Sequence[_Task],
    counter: Any,
    done: Any,
    errors: Any,
    method: str,
    kw: dict[str, Any],
    scaling: str = "minmax",
    body_connectivity: int = 4,
) -> None:
    """Worker-process entry: attach to the shared buffers and compute claimed tasks."""
    from multiprocessing import shared_memory

    die_with_parent(parent_pid)

    shm_in = shared_memory.SharedMemory(name=in_name)
    shm_out = shared_memory.SharedMemory(name=out_name)
    try:
        flat_in = np.ndarray((total,), dtype=np.float32, buffer=shm_in.buf)
        flat_out = np.ndarray((total,), dtype=np.int32, buffer=shm_out.buf)
        _run_claimed(
            flat_in, flat_out, tasks, counter, done, method, kw, scaling=scaling, body_connectivity=body_connectivity
        )
        del flat_in, flat_out
    except BaseException as exc:  # reported to the parent, which re-raises it
        with counter.get_lock():
            counter.value = len(tasks)  # stop everyone
        text = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # not transferable: the parent raises a RuntimeError with the text
            exc = None  # type: ignore[assignment]
        errors.put((exc, text))
    finally:
        for shm in (shm_in, shm_out):
            try:
                shm.close()
            except BufferError:  # a view survives in the traceback; the OS unmaps at exit
                pass


def shm_free_bytes() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def compute_parallel(
    todo: Sequence[tuple[str, np.ndarray, float, tuple[float, float, float]]],
    method: str,
    kw: dict[str, Any],
    workers: int,
    slices_per_task: int,
    mp_context: str,
    bar: Progress,
    scaling: str = "minmax",
    body_connectivity: int = 4,
) -> dict[str, np.ndarray]:
    """The calling process plus ``workers - 1`` spawned processes over shared-memory buffers (``scaling``,
    ``body_connectivity``: :class:`~episodes.pseudolabels.params.SuperpixelParams`)."""
    from multiprocessing import shared_memory

    offsets: list[int] = []
    tasks: list[_Task] = []
    total = 0
    for _, image, threshold, spacing in todo:
        offsets.append(total)
        _, h, w = image.shape
        for z0 in range(0, image.shape[0], slices_per_task):
            z = min(slices_per_task, image.shape[0] - z0)
            sz, sh, sw = (float(x) for x in spacing)
            tasks.append((total + z0 * h * w, z, h, w, float(threshold), (sz, sh, sw)))
        total += image.size
    nbytes = max(4 * total, 1)
    ctx = get_context(mp_context)
    shm_in = shared_memory.SharedMemory(create=True, size=nbytes)
    shm_out = shared_memory.SharedMemory(create=True, size=nbytes)
    procs: list[Any] = []
    try:
        flat_in = np.ndarray((total,), dtype=np.float32, buffer=shm_in.buf)
        for (_, image, _, _), start in zip(todo, offsets):
            flat_in[start : start + image.size].reshape(image.shape)[...] = image
        counter = ctx.Value("q", 0)
        done = ctx.Array("b", len(tasks), lock=False)
        errors = ctx.SimpleQueue()
        # forkserver workers are children of the server, whose pid is not known here
        parent_pid = None if mp_context == "forkserver" else os.getpid()
        for _ in range(workers - 1):
            proc = ctx.Process(  # type: ignore[attr-defined]
                target=_shared_worker,
                args=(
                    parent_pid, shm_in.name, shm_out.name, total, tasks, counter, done, errors, method, kw, scaling,
                    body_connectivity,
                ),
                daemon=True,
            )
            proc.start()
            procs.append(proc)
        slices_done = np.array([t[1] for t in tasks], dtype=np.int64)

        def progress() -> None:
            bar.set_done(int(slices_done[np.frombuffer(done, dtype=np.int8) > 0].sum()))

        flat_out = np.ndarray((total,), dtype=np.int32, buffer=shm_out.buf)
        if _MAIN_PROCESS_COMPUTES:
            _run_claimed(
                flat_in, flat_out, tasks, counter, done, method, kw, on_done=progress, scaling=scaling,
                body_connectivity=body_connectivity,
            )
        for proc in procs:
            while proc.is_alive():
                proc.join(timeout=0.2)
                progress()
                if not errors.empty():
                    break
        if not errors.empty():
            exc, tb = errors.get()
            if exc is None:
                raise RuntimeError(f"superpixel worker process failed:\n{tb}")
            raise exc from RuntimeError(f"in a superpixel worker process:\n{tb}")
        missing = [i for i in range(len(tasks)) if not done[i]]
        if missing:
            codes = [p.exitcode for p in procs]
            raise RuntimeError(
                f"superpixel worker processes exited (exit codes {codes}) leaving {len(missing)} of "
                f"{len(tasks)} chunks uncomputed"
            )
        progress()
        outputs = {
            subject: flat_out[start : start + image.size].reshape(image.shape).copy()
            for (subject, image, _, _), start in zip(todo, offsets)
        }
        del flat_out, flat_in
        return outputs
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for shm in (shm_in, shm_out):
            try:
                shm.close()
            except BufferError:  # a view is still alive on an error path; unlink frees it at exit
                pass
            shm.unlink()
