"""Does `fewshot segment` survive a user's file layout? Dice on real scans re-stored as a user's files might be.

The fold's query scans (and their labels) are written as NIfTI (a) as stored, (b) re-oriented: the in-plane
axes swapped and one flipped, the affine updated so every voxel keeps its world position, (c) resampled to
``--mm`` mm pixels (linear; labels nearest) and padded with air to ``--pad`` px, (d) both; and (e) the
reverse case: the support re-oriented, the query as stored. Each (query, organ) is segmented from the fold's
untransformed support with :func:`fewshot.segment.segment_files` (what ``fewshot segment`` runs), with the
organ's slice range of the query label as ``query_range`` (protocol-like), and scored with 3D Dice against
the label transformed the same way, in the written file's own layout. Dice is averaged over scans, then
organs. It only measures; run it on two checkouts to compare code versions (``--allow-spacing-mismatch``
is passed, which older code needed for (c)).

Example::

    PYTHONPATH=. python benchmarks/bench_orientation.py --checkpoint runs/mr_fold0/checkpoints/last.ckpt \\
        --data $FEWSHOT_DATA/chaos_mr_t2_ssl_alpnet_preproc --out runs/orientation.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import nibabel as nib
import numpy as np

__all__ = ["main", "reoriented", "resampled"]

ORGANS = ("liver", "right_kidney", "left_kidney", "spleen")
CASES = ("as stored", "re-oriented", "resampled + padded", "both", "support re-oriented")


def reoriented(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane axes swapped, then the new first axis flipped; every voxel keeps its world position."""
    out = np.ascontiguousarray(np.transpose(array, (1, 0, 2))[::-1])
    index = np.eye(4)[:, [1, 0, 2, 3]]  # new (i, j, k) -> old (j, i, k)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, out.shape[0] - 1
    return out, affine @ index @ flip


def resampled(array: np.ndarray, affine: np.ndarray, mm: float, pad: int, *, label: bool) -> tuple[np.ndarray, np.ndarray]:
    """In-plane pixels resampled to ``mm`` (linear; labels nearest), centred in ``pad`` x ``pad`` (air: 0)."""
    from scipy.ndimage import zoom

    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    n = [round(array.shape[a] * zooms[a] / mm) for a in (0, 1)]
    factors = (n[0] / array.shape[0], n[1] / array.shape[1], 1.0)
    out = zoom(array.astype(np.float32), factors, order=0 if label else 1, grid_mode=True, mode="grid-constant")
    before = [(pad - n[a]) // 2 for a in (0, 1)]
    padded = np.zeros((pad, pad, array.shape[2]), dtype=np.float32)
    padded[before[0] : before[0] + n[0], before[1] : before[1] + n[1]] = out
    to_old = np.eye(4)  # new index u -> old index (u - before + 0.5) / factor - 0.5 (pixel edges aligned)
    for a in (0, 1):
        to_old[a, a] = 1.0 / factors[a]
        to_old[a, 3] = (-before[a] + 0.5) / factors[a] - 0.5
    return (np.rint(padded) if label else padded), affine @ to_old


def _write(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), str(path))
    return path


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & truth).sum()) / denom


def _variants(image: Path, label: Path, work: Path, mm: float, pad: int) -> dict[str, tuple[Path, Path]]:
    img, lab = nib.load(str(image)), nib.load(str(label))
    x, y, aff = np.asarray(img.dataobj), np.rint(np.asarray(lab.dataobj)), np.asarray(img.affine)
    out = {"as stored": (image, label)}
    xo, ao = reoriented(x, aff)
    yo, _ = reoriented(y, aff)
    out["re-oriented"] = (_write(work / "a_img.nii.gz", xo, ao), _write(work / "a_lab.nii.gz", yo, ao))
    xr, ar = resampled(x, aff, mm, pad, label=False)
    yr, _ = resampled(y, aff, mm, pad, label=True)
    out["resampled + padded"] = (_write(work / "b_img.nii.gz", xr, ar), _write(work / "b_lab.nii.gz", yr, ar))
    xb, ab = reoriented(xr, ar)
    yb, _ = reoriented(yr, ar)
    out["both"] = (_write(work / "c_img.nii.gz", xb, ab), _write(work / "c_lab.nii.gz", yb, ab))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from episodes.data.labels import CHAOS_MR
    from episodes.protocol import Protocol
    from fewshot.segment import segment_files

    root = Path(args.data)
    ids = sorted((p.name[6:].split(".")[0] for p in root.glob("image_*.nii.gz")), key=int)
    split = Protocol(dataset="chaos-mr", fold=args.fold).split(ids)
    support, queries = split.support, list(split.queries)[: args.queries]
    sup_img, sup_lab = root / f"image_{support}.nii.gz", root / f"label_{support}.nii.gz"
    cases = [c for c in CASES if c in args.cases.split(",")] if args.cases else list(CASES)
    finetune = {} if args.finetune_steps is None else {"finetune": {"steps": args.finetune_steps}}
    scores: dict[str, dict[str, list[float]]] = {c: {o: [] for o in ORGANS} for c in CASES}
    warnings: dict[str, list[str]] = {c: [] for c in CASES}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        s_img, s_aff = reoriented(np.asarray(nib.load(str(sup_img)).dataobj), nib.load(str(sup_img)).affine)
        s_lab, _ = reoriented(np.rint(np.asarray(nib.load(str(sup_lab)).dataobj)), nib.load(str(sup_img)).affine)
        sup_reo = (_write(work / "s_img.nii.gz", s_img, s_aff), _write(work / "s_lab.nii.gz", s_lab, s_aff))
        for q in queries:
            variants = _variants(root / f"image_{q}.nii.gz", root / f"label_{q}.nii.gz", work, args.mm, args.pad)
            variants["support re-oriented"] = variants["as stored"]
            for case in cases:
                q_img, q_lab = variants[case]
                s_pair = sup_reo if case == "support re-oriented" else (sup_img, sup_lab)
                truth_all = np.rint(np.asarray(nib.load(str(q_lab)).dataobj)).astype(int)
                z_axis = 2
                for organ in ORGANS:
                    truth = truth_all == CHAOS_MR.value(organ)
                    zs = np.flatnonzero(truth.any(axis=tuple(a for a in range(3) if a != z_axis)))
                    out = work / f"pred_{q}_{organ}.nii.gz"
                    report = segment_files(
                        checkpoint=args.checkpoint, support=s_pair[0], support_mask=s_pair[1], organ=organ,
                        query=q_img, out=out, label_map="chaos-mr", query_range=(int(zs[0]), int(zs[-1])),
                        allow_spacing_mismatch=True, device="cpu", overwrite=True, **finetune,
                    )
                    pred = np.asarray(nib.load(str(out)).dataobj) > 0
                    scores[case][organ].append(_dice(pred, truth))
                    warnings[case] += [w for w in report.get("warnings", []) if "plausible" not in w]
            print(f"query {q}: " + ", ".join(f"{c} {np.mean([s[-1] for s in scores[c].values()]):.3f}" for c in cases),
                  flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    table = {c: {o: float(np.mean(v)) for o, v in scores[c].items()} for c in cases}
    for c in cases:
        table[c]["mean"] = float(np.mean([table[c][o] for o in ORGANS]))
    return {
        "checkpoint": str(args.checkpoint), "support": support, "queries": queries, "mm": args.mm, "pad": args.pad,
        "dice": table, "per_scan": {c: scores[c] for c in cases}, "warnings": {c: sorted(set(warnings[c])) for c in cases},
        "finetune_steps": args.finetune_steps, "commit": commit, "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["| the query scan, as a user's file might store it | " + " | ".join(ORGANS) + " | mean Dice |",
             "|---|" + "---:|" * (len(ORGANS) + 1)]  # fmt: skip
    for case in result["dice"]:
        row = result["dice"][case]
        lines.append(f"| {case} | " + " | ".join(f"{row[o]:.3f}" for o in (*ORGANS, "mean")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="last.ckpt of an MRI model trained on --fold")
    p.add_argument("--data", required=True, help="chaos_mr_t2_ssl_alpnet_preproc folder")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--queries", type=int, default=4, help="first N query scans of the fold")
    p.add_argument("--cases", default="", help=f"comma-separated subset of: {', '.join(CASES)} (default: all)")
    p.add_argument("--mm", type=float, default=0.8, help="in-plane pixel size of the resampled copies")
    p.add_argument("--pad", type=int, default=512, help="slice size the resampled copies are padded to")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="test-time fine-tuning steps per chunk (default: the checkpoint's model.finetune; 0 is ~20x faster)")
    p.add_argument("--out", required=True, help="results .json (a .md table is written beside it)")
    args = p.parse_args(argv)
    from fewshot.cli import quiet_logs, run_reporting_user_errors

    quiet_logs()

    def go() -> int:
        result = run(args)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(to_markdown(result))
        print(to_markdown(result))
        return 0

    return run_reporting_user_errors("bench_orientation", go)


if __name__ == "__main__":
    raise SystemExit(main())
