"""SIGKILL in the middle of a superpixel cache write leaves only complete entries (and a temp file)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from episodes.data.phantom import make_phantom_dataset
from episodes.pseudolabels import compute_dataset_superpixels_with_stats

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX-only")

SHAPE = (12, 48, 48)

#: Computes two subjects' maps; the second entry's write stalls half-way (a slow disk) until killed.
_WRITER = f"""
import sys, time
from episodes.data.phantom import make_phantom_dataset
from episodes.pseudolabels import cache, compute_dataset_superpixels_with_stats

real, calls = cache._write_npz, []

def slow_write(fh, arrays, compresslevel=1):
    calls.append(1)
    if len(calls) == 2:
        real(fh, arrays, compresslevel)  # the complete bytes, but the write never returns
        fh.seek(fh.tell() // 2)
        fh.truncate()
        fh.flush()
        print("writing", flush=True)
        time.sleep(120)
    real(fh, arrays, compresslevel)

cache._write_npz = slow_write
vols = make_phantom_dataset(2, modality="CT", shape={SHAPE})
compute_dataset_superpixels_with_stats(vols, cache_dir=sys.argv[1], workers=1, progress=False)
"""


def _wait_for_line(proc: subprocess.Popen[bytes], expected: bytes, timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            if not line:
                break
    raise AssertionError(f"no {expected!r} from the writer (exit {proc.poll()}): {proc.stderr.read()!r}")  # type: ignore[union-attr]


def test_sigkill_during_cache_write(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(cache_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        _wait_for_line(proc, b"writing", timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    names = sorted(p.name for p in cache_dir.iterdir())
    entries = [n for n in names if n.endswith(".npz")]
    temps = [n for n in names if n.endswith(".tmp")]
    assert len(entries) == 1 and entries[0].startswith("superpixels_0_"), names  # subject 0 was complete
    assert len(temps) == 1 and temps[0].startswith(".superpixels_1_"), names  # subject 1's half-written file
    assert (cache_dir / temps[0]).stat().st_size > 0
    assert not any(n.startswith("superpixels_1_") for n in names)  # never under the final name

    volumes = make_phantom_dataset(2, modality="CT", shape=SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unreadable entry": the temp file is not taken for one
        maps, stats = compute_dataset_superpixels_with_stats(
            volumes, cache_dir=cache_dir, workers=1, progress=False
        )
    assert (stats.cache_hits, stats.cache_misses) == (1, 1)  # subject 0 loaded, subject 1 recomputed
    fresh, _ = compute_dataset_superpixels_with_stats(volumes, cache_dir=None, workers=1, progress=False)
    for subject in ("0", "1"):
        np.testing.assert_array_equal(maps[subject], fresh[subject])
    _, again = compute_dataset_superpixels_with_stats(volumes, cache_dir=cache_dir, workers=1, progress=False)
    assert (again.cache_hits, again.cache_misses) == (2, 0)


def test_disk_full_during_cache_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import errno

    from episodes import atomic

    class FullDisk:
        """Writes fail with ENOSPC after 1 KiB (the disk fills during the entry's write)."""

        def __init__(self, path: Path) -> None:
            self.f, self.room = builtins.open(path, "wb"), 1024

        def write(self, data: bytes) -> int:
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.f.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self.f, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def full_for_subject_1(path: Path, mode: str = "r", **kwargs: object) -> object:
        if mode == "wb" and ".superpixels_1_" in str(path):
            return FullDisk(path)
        return builtins.open(path, mode, **kwargs)  # type: ignore[call-overload]

    cache_dir = tmp_path / "cache"
    volumes = make_phantom_dataset(2, modality="CT", shape=SHAPE)
    monkeypatch.setattr(atomic, "open", full_for_subject_1, raising=False)
    with pytest.raises(OSError, match=r"No space left on device while writing .*superpixels_1_.*\.npz"):
        compute_dataset_superpixels_with_stats(volumes, cache_dir=cache_dir, workers=1, progress=False)
    monkeypatch.undo()
    names = sorted(p.name for p in cache_dir.iterdir())
    assert len(names) == 1 and names[0].startswith("superpixels_0_"), names  # no partial or temporary file
    _, stats = compute_dataset_superpixels_with_stats(volumes, cache_dir=cache_dir, workers=1, progress=False)
    assert (stats.cache_hits, stats.cache_misses) == (1, 1)  # subject 0's entry is valid
