"""Superpixel generation and episode throughput benchmark.

Measures in one run:

(a) reference loop: per-slice, single-process ``skimage.segmentation.felzenszwalb`` + body mask, as
    the SSL-ALPNet notebook does it;
(b) :func:`episodes.superpixels.compute_dataset_superpixels` for each method with ``--workers``
    processes and a cold cache;
(c) the same call again with a warm cache;
(d) episodes/s of :class:`episodes.selfsup.SelfSupervisedEpisodes` (``alpnet`` augmentation) through a
    DataLoader with ``--loader-workers`` workers at 256x256.

Usage::

    python benchmarks/bench_superpixels.py --limit-subjects 4 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np


def _reference_loop(images: list[np.ndarray], threshold: float) -> tuple[float, int]:
    """SSL-ALPNet notebook style: felzenszwalb per slice, then body mask and relabel per slice."""
    from scipy import ndimage
    from skimage.segmentation import felzenszwalb

    n = 0
    start = time.perf_counter()
    for image in images:
        for sl in image:
            seg = felzenszwalb(sl, min_size=400, sigma=1)
            fg = sl > threshold
            if fg.any():
                lab, _ = ndimage.label(fg)
                fg = ndimage.binary_fill_holes(lab == np.argmax(np.bincount(lab.flat)[1:]) + 1)
            seg = (seg + 1) * fg
            _, seg = np.unique(seg, return_inverse=True)
            n += 1
    return time.perf_counter() - start, n


def main(argv: list[str] | None = None) -> int:
    from episodes.superpixels import (
        METHODS,
        SuperpixelParams,
        compute_dataset_superpixels_with_stats,
        superpixel_input,
    )
    from episodes.volumes import load_ssl_alpnet_folder

    default = Path(os.environ.get("FEWSHOT_DATA", "")) / "chaos_mr_t2_ssl_alpnet_preproc"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=default, help="SSL-ALPNet NIfTI folder (default: %(default)s)"
    )
    parser.add_argument("--limit-subjects", type=int, default=None, help="use only the first N subjects")
    parser.add_argument("--workers", type=int, default=2, help="superpixel worker processes")
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers for (d)")
    parser.add_argument("--episodes", type=int, default=200, help="episodes timed in (d)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder (set FEWSHOT_DATA or pass --data)")

    volumes = load_ssl_alpnet_folder(args.data)
    if args.limit_subjects:
        volumes = volumes[: args.limit_subjects]
    n_slices = sum(v.shape[0] for v in volumes)
    print(f"{len(volumes)} subjects, {n_slices} slices, shape {volumes[0].shape[1:]}", file=sys.stderr)
    inputs = [superpixel_input(v) for v in volumes]
    ref_s, ref_n = _reference_loop(inputs, SuperpixelParams().threshold_for(volumes[0]))
    rows: list[dict[str, Any]] = [
        {"run": "(a) reference loop felzenszwalb, 1 process", "seconds": ref_s, "slices_per_s": ref_n / ref_s}
    ]
    maps_for_episodes = None
    for method in args.methods:
        if method == "fast-slic":
            try:
                import fast_slic  # noqa: F401
            except ImportError:
                print("fast-slic not installed: skipped", file=sys.stderr)
                continue
        params = SuperpixelParams(method)
        with tempfile.TemporaryDirectory() as cache_dir:
            for label in ("cold", "warm"):
                maps, stats = compute_dataset_superpixels_with_stats(
                    volumes, params, cache_dir=cache_dir, workers=args.workers, progress=False
                )
                rows.append(
                    {
                        "run": f"({'b' if label == 'cold' else 'c'}) {method}, {args.workers} proc, {label} cache",
                        "seconds": stats.seconds,
                        "slices_per_s": n_slices / stats.seconds,
                        "regions_mean": stats.regions_mean,
                        "cache_hits": stats.cache_hits,
                    }
                )
        if method == "felzenszwalb":
            maps_for_episodes = maps
    for row in rows:
        row["speedup_vs_a"] = row["slices_per_s"] / rows[0]["slices_per_s"]

    episode_row = None
    if maps_for_episodes is not None:
        import torch
        from torch.utils.data import DataLoader

        from episodes.preprocess import preprocess
        from episodes.selfsup import SelfSupervisedEpisodes, collate_episodes

        pre = [preprocess(v, size=256) for v in volumes]
        maps = {}
        for v, p in zip(volumes, pre):
            m = maps_for_episodes[v.subject]
            if m.shape != p.shape:
                t = torch.from_numpy(m.astype(np.float32))[:, None]
                m = (
                    torch.nn.functional.interpolate(t, size=p.shape[1:], mode="nearest")[:, 0]
                    .numpy()
                    .astype(np.int32)
                )
            maps[v.subject] = m
        ds = SelfSupervisedEpisodes(pre, maps, length=args.episodes + 10, augment="alpnet", seed=0)
        loader = DataLoader(ds, batch_size=1, num_workers=args.loader_workers, collate_fn=collate_episodes)
        it = iter(loader)
        for _ in range(10):  # warm-up (worker start)
            next(it)
        start = time.perf_counter()
        for _ in range(args.episodes):
            next(it)
        sec = time.perf_counter() - start
        episode_row = {"episodes": args.episodes, "seconds": sec, "episodes_per_s": args.episodes / sec}

    print("| run | seconds | slices/s | vs (a) | regions/slice |")
    print("|---|---|---|---|---|")
    for row in rows:
        regions = f"{row['regions_mean']:.1f}" if "regions_mean" in row else ""
        print(
            f"| {row['run']} | {row['seconds']:.2f} | {row['slices_per_s']:.1f} | "
            f"{row['speedup_vs_a']:.2f}x | {regions} |"
        )
    if episode_row:
        print(
            f"\n(d) SelfSupervisedEpisodes, alpnet augmentation, 256x256, DataLoader {args.loader_workers} workers: "
            f"{episode_row['episodes_per_s']:.1f} episodes/s ({episode_row['episodes']} episodes)"
        )
    if args.out:
        result = {
            "data": str(args.data),
            "subjects": len(volumes),
            "slices": n_slices,
            "workers": args.workers,
            "rows": rows,
            "episodes": episode_row,
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
