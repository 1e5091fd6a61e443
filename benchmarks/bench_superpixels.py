"""Superpixel generation and episode throughput benchmark.

Measures in one process run, on the same slices:

(a) reference loop: per-slice, single-process ``skimage.segmentation.felzenszwalb`` + body mask
    (``binary_fill_holes``) + ``np.unique`` relabelling, as the SSL-ALPNet notebook does it;
(b) :func:`episodes.pseudolabels.compute_dataset_superpixels_with_stats` for each method with
    ``--workers`` processes and a cold (empty) cache;
(c) the same call again with the warm cache;
(d) episodes/s of :class:`episodes.sampling.SelfSupervisedEpisodes` (``alpnet`` augmentation,
    1-shot 1-query, 3 channels, 256x256, batch size 1) through a DataLoader for each
    ``--loader-workers`` value.

Prints Markdown tables (slices/s and the ratio to (a); episodes/s) and writes JSON with ``--out``.
The machine's load average is recorded before and after, since timings on a shared machine are noisy.

Usage::

    python benchmarks/bench_superpixels.py --out bench.json
    python benchmarks/bench_superpixels.py --limit-subjects 4 --methods fast-slic --loader-workers 0
"""

from __future__ import annotations

import argparse
import os
import platform
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


def _episodes_per_second(
    dataset: Any, loader_workers: int, episodes: int, warmup: int = 10
) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from episodes.sampling import collate_episodes

    loader = DataLoader(dataset, batch_size=1, num_workers=loader_workers, collate_fn=collate_episodes)
    it = iter(loader)
    for _ in range(warmup):  # worker start-up
        next(it)
    start = time.perf_counter()
    for _ in range(episodes):
        next(it)
    seconds = time.perf_counter() - start
    del it
    return {
        "loader_workers": loader_workers,
        "episodes": episodes,
        "seconds": seconds,
        "episodes_per_s": episodes / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    from episodes.atomic import atomic_write_json
    from episodes.data.loaders import load_ssl_alpnet_folder
    from episodes.pseudolabels import (
        METHODS,
        SuperpixelParams,
        compute_dataset_superpixels_with_stats,
        superpixel_input,
    )

    default = Path(os.environ.get("FEWSHOT_DATA", "")) / "chaos_mr_t2_ssl_alpnet_preproc"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=default, help="SSL-ALPNet NIfTI folder (default: %(default)s)"
    )
    parser.add_argument("--limit-subjects", type=int, default=None, help="use only the first N subjects")
    parser.add_argument("--workers", type=int, default=2, help="superpixel processes (calling one included)")
    parser.add_argument(
        "--loader-workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts for (d)"
    )
    parser.add_argument("--episodes", type=int, default=300, help="episodes timed per DataLoader in (d)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder (set FEWSHOT_DATA or pass --data)")

    load_before = os.getloadavg()
    volumes = load_ssl_alpnet_folder(args.data)
    if args.limit_subjects:
        volumes = volumes[: args.limit_subjects]
    n_slices = sum(v.shape[0] for v in volumes)
    print(
        f"{len(volumes)} subjects, {n_slices} slices, shape {volumes[0].shape[1:]}, "
        f"load average {load_before[0]:.2f}",
        file=sys.stderr,
    )
    inputs = [superpixel_input(v) for v in volumes]
    ref_s, ref_n = _reference_loop(inputs, SuperpixelParams().threshold_for(volumes[0]))
    ref_rate = ref_n / ref_s
    rows: list[dict[str, Any]] = [
        {
            "run": "(a) reference loop",
            "method": "felzenszwalb (skimage, per slice)",
            "workers": 1,
            "cache": "-",
            "seconds": ref_s,
            "slices_per_s": ref_rate,
        }
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
                        "run": "(b)" if label == "cold" else "(c)",
                        "method": method,
                        "workers": args.workers,
                        "cache": label,
                        "seconds": stats.seconds,
                        "slices_per_s": n_slices / stats.seconds,
                        "regions_mean": stats.regions_mean,
                        "cache_hits": stats.cache_hits,
                    }
                )
        if method == "felzenszwalb" or maps_for_episodes is None:
            maps_for_episodes = maps
    for row in rows:
        row["speedup_vs_reference"] = row["slices_per_s"] / ref_rate

    episode_rows: list[dict[str, Any]] = []
    if maps_for_episodes is not None and args.loader_workers:
        import torch

        from episodes.data.preprocess import preprocess
        from episodes.sampling import SelfSupervisedEpisodes

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
        ds = SelfSupervisedEpisodes(pre, maps, length=args.episodes + 20, augment="alpnet", seed=0)
        for loader_workers in args.loader_workers:
            episode_rows.append(_episodes_per_second(ds, loader_workers, args.episodes))
    load_after = os.getloadavg()

    print(f"\nSuperpixels: {len(volumes)} subjects, {n_slices} slices of {volumes[0].shape[1:]}")
    print("\n| run | method | processes | cache | seconds | slices/s | vs (a) | regions/slice |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        regions = f"{row['regions_mean']:.1f}" if "regions_mean" in row else ""
        print(
            f"| {row['run']} | {row['method']} | {row['workers']} | {row['cache']} | {row['seconds']:.2f} | "
            f"{row['slices_per_s']:.1f} | {row['speedup_vs_reference']:.1f}x | {regions} |"
        )
    if episode_rows:
        print("\n(d) SelfSupervisedEpisodes, alpnet augmentation, 1-shot, 3 channels, 256x256, batch 1")
        print("\n| DataLoader workers | episodes | seconds | episodes/s |")
        print("|---|---|---|---|")
        for er in episode_rows:
            print(
                f"| {er['loader_workers']} | {er['episodes']} | {er['seconds']:.2f} | {er['episodes_per_s']:.1f} |"
            )
    print(f"\nload average (1/5/15 min): before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    if args.out:
        result = {
            "data": str(args.data),
            "subjects": len(volumes),
            "slices": n_slices,
            "workers": args.workers,
            "rows": rows,
            "episodes": episode_rows,
            "load_average_before": list(load_before),
            "load_average_after": list(load_after),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
