"""Peak memory and time of ``fewshot segment`` on large synthetic CT scans (512 x 512 x Z).

Writes a synthetic CT query of each slice count (HU, int16, air -1000 around a body with a "liver"),
a 512 x 512 x 40 support with its mask, and runs ``fewshot segment`` in a subprocess per size, reporting
the child's peak RSS (``ru_maxrss``) and wall time::

    python benchmarks/bench_segment_memory.py --checkpoint CKPT --work /tmp/bigct --slices 150,300,600

``CKPT`` is any CT checkpoint (the phantom's is enough: the memory goes to the scans, not the model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def synthetic_ct(slices: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y, Z)`` int16 HU volume and uint8 liver mask, as nibabel stores them."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[:512, :512]
    body = ((x - 256) / 200.0) ** 2 + ((y - 256) / 150.0) ** 2 < 1
    liver = ((x - 220) / 70.0) ** 2 + ((y - 230) / 60.0) ** 2 < 1
    image = np.full((512, 512, slices), -1000, np.int16)
    mask = np.zeros((512, 512, slices), np.uint8)
    lo, hi = slices // 4, 3 * slices // 4
    for z in range(slices):
        plane = np.where(body, 40, -1000).astype(np.int16)
        if lo <= z < hi:
            plane[liver] = 90
            mask[:, :, z] = liver
        image[:, :, z] = plane + rng.integers(-20, 20, (512, 512), dtype=np.int16) * body
    return image, mask


def write(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--work", required=True, help="folder for the synthetic scans and predictions")
    parser.add_argument("--slices", default="150,300,600")
    parser.add_argument("--suffix", default=".nii", help=".nii (fast to write) or .nii.gz")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    support, support_mask = work / f"support{args.suffix}", work / f"support_mask{args.suffix}"
    if not support.is_file():
        image, mask = synthetic_ct(40, seed=1)
        write(support, image)
        write(support_mask, mask)
    rows = []
    for n in (int(s) for s in args.slices.split(",")):
        query = work / f"query_{n}{args.suffix}"
        if not query.is_file():
            write(query, synthetic_ct(n)[0])
        out = work / f"pred_{n}.nii.gz"
        cmd = [sys.executable, "-m", "fewshot", "segment", "--checkpoint", args.checkpoint, "--support", str(support),
               "--support-mask", str(support_mask), "--organ", "liver", "--query", str(query), "--out", str(out),
               "--overwrite", "--device", "cpu"]
        code = (
            "import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode, time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stderr[-2000:], file=sys.stderr)"
        )
        done = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True,
                              env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
        rc, seconds, kib = done.stdout.split()
        if rc != "0":
            print(done.stderr, file=sys.stderr)
            return 1
        rows.append({"slices": n, "seconds": round(float(seconds), 1), "peak_rss_mb": round(int(kib) / 1024)})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
