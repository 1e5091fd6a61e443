"""Training cost of the packaged recipes' members (issue 42): where one step's time goes, FLOPs and MFU, and the
Lightning trainer against a bare PyTorch loop of the same model, episodes and optimiser.

For every distinct member config of ``--recipes`` (default ``mri-cpu,ct-cpu,mri-gpu``: ``mri_cbr_small``,
``ct_cbr_small``, ``ct_resnet50``, ``mri_resnet50_256``; the GPU recipe's member is timed on the CPU at a few steps),
with the member's overrides and the recipe's torch threads per member:

* **lightning**: :func:`fewshot.training.train` as the recipe runs it (CSV log, progress lines, ``last.ckpt`` every
  ``train.ckpt_every`` steps, the member's DataLoader workers), with a callback that stamps every step: ``data``
  (waiting for the DataLoader), ``forward`` (the model), ``loss+log`` (loss, ``self.log``, zero_grad), ``backward``,
  ``optimizer`` (the SGD step), ``framework`` (the rest: Lightning's loop, scheduler, logger, callbacks). One
  checkpoint save is timed and spread over ``ckpt_every`` steps (``ckpt``).
* **bare**: the same :class:`~fewshot.training.module.FewShotModule` (same initial weights), DataLoader
  (:meth:`~fewshot.training.data.EpisodeDataModule.for_experiment`: dataset, sampler, augmentation, workers) and
  optimiser + scheduler (``configure_optimizers``) in a plain loop under the same autocast. Its final weights are
  compared with Lightning's (``torch.equal``): both must have computed the same thing.
* **episodes**: CPU ms to make one step's batch in this process (what a DataLoader worker spends per step).
* **FLOPs** of one forward + backward (``torch.utils.flop_counter.FlopCounterMode``); **MFU** = FLOPs x steps/s / peak,
  with peak = cores x clock x FLOPs per cycle and core (:func:`cpu_peak`), and against a measured bf16/fp32 GEMM.

``--variant NAME:KEY=VALUE,...`` adds Lightning runs with config overrides (``threads=N`` sets the torch threads,
``compile=backbone`` or ``compile=model`` wraps that part in ``torch.compile`` before the first step, ``pin=true``
pins each lane and its DataLoader workers to one core),
timed against the baseline; arms are interleaved over ``--rounds`` (A B C A B C) since the machine is shared, and the
load average is recorded with every timing. ``--lanes 2`` runs every timing as that many processes side by side
(the CPU recipes train two members at once, one torch thread each). Writes ``training_cost.md`` and ``.json``::

    python benchmarks/bench_training_cost.py --out cost --variant cl:train.channels_last=true   # FEWSHOT_DATA set
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
import yaml

PHASES = ("data", "forward", "loss_log", "backward", "optimizer", "framework")
FEW_STEPS = {"mri_resnet50_256": (1, 3)}  # (warmup, timed) for the GPU recipe's member on a CPU


def cpu_peak(threads: int, dtype: str) -> tuple[float, str]:
    """Nominal peak FLOP/s of ``threads`` cores: cores x clock x FLOPs/cycle/core for the ISA and ``dtype``.

    FLOPs/cycle/core (an FMA counts 2): AMD family 19h (Zen 3/4: two 256-bit FMA pipes; Zen 4 runs a 512-bit op on
    both) 32 fp32, 64 bf16 with AVX512_BF16 (``VDPBF16PS``: 32 bf16 pairs per 512-bit op); AMD 1Ah (Zen 5, 512-bit
    pipes) 64 / 128; Intel AVX-512 with two FMA ports 64 / 128 (AVX512_BF16), 1024 bf16 with AMX; AVX2 + FMA 32.
    Without hardware bf16 the bf16 peak is the fp32 one. Clock: ``cpu MHz`` of /proc/cpuinfo (a VM shows its
    nominal clock; boost is not counted).
    """
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in info.splitlines()[:40]) if v}
    flags = set(field.get("flags", "").split())
    mhz = float(field.get("cpu MHz", "0") or 0)
    amd, family = field.get("vendor_id") == "AuthenticAMD", int(field.get("cpu family", "0") or 0)
    if amd:
        fp32 = 64 if family >= 0x1A else 32
    else:
        fp32 = 64 if "avx512f" in flags else 32 if "fma" in flags else 16
    bf16 = 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else fp32
    per = bf16 if dtype == "bf16" else fp32
    return threads * mhz * 1e6 * per, f"{threads} x {mhz / 1000:.2f} GHz x {per} FLOP/cycle ({dtype})"


def gemm_rate(threads: int, dtype: torch.dtype, n: int = 1024, reps: int = 8) -> float:
    """Measured FLOP/s of an ``n x n`` matmul in ``dtype`` on ``threads`` threads (an achievable peak)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.set_num_threads(before)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _clock() -> Any:
    """The Lightning callback class stamping each step's phases (made here: Lightning is imported late)."""
    from pytorch_lightning.callbacks import Callback
    from pytorch_lightning.profilers import PassThroughProfiler

    class Clock(Callback):  # type: ignore[misc]
        def __init__(self, barrier: Any = None, compile: str | None = None) -> None:
            self.compile = compile
            self.marks: list[dict[str, float]] = []
            self.fetch, self.barrier, self.ckpt_s, self.state = 0.0, barrier, 0.0, None

        def mark(self, key: str) -> None:
            if self.marks:
                self.marks[-1][key] = time.perf_counter()

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            clock, inner = self, trainer.profiler

            class Fetch(PassThroughProfiler):  # type: ignore[misc]
                def start(self, action: str) -> None:
                    clock.f0 = time.perf_counter() if action.endswith("train_dataloader_next") else clock.f0
                    inner.start(action)

                def stop(self, action: str) -> None:
                    if action.endswith("train_dataloader_next"):
                        clock.fetch += time.perf_counter() - clock.f0
                    inner.stop(action)

            self.f0 = 0.0
            trainer.profiler = Fetch()
            if self.compile == "model":
                pl_module.model = torch.compile(pl_module.model)
            elif self.compile == "backbone":
                pl_module.model.backbone = torch.compile(pl_module.model.backbone)
            elif self.compile is not None:
                raise ValueError(f"compile must be 'model' or 'backbone', got {self.compile!r}")
            pl_module.model.register_forward_pre_hook(lambda *_: self.mark("f0"))
            pl_module.model.register_forward_hook(lambda *_: self.mark("f1"))
            if self.barrier is not None:
                self.barrier.wait()

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            trainer.optimizers[0].register_step_post_hook(lambda *_: self.mark("o1"))

        def on_train_batch_start(self, trainer: Any, *_: Any) -> None:
            if self.marks:
                self.marks[-1]["data"] = self.fetch  # the fetch since the last step start ends that interval
            self.fetch = 0.0
            self.marks.append({"start": time.perf_counter(), "cpu": time.process_time()})

        def on_before_backward(self, *_: Any) -> None:
            self.mark("b0")

        def on_after_backward(self, *_: Any) -> None:
            self.mark("b1")

        def on_before_optimizer_step(self, *_: Any) -> None:
            self.mark("o0")

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *_: Any) -> None:
            self.marks[-1]["loss"] = float(outputs["loss"])

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            model = getattr(pl_module.model, "_orig_mod", pl_module.model)  # compile=model wraps it
            self.state = {
                k.replace("_orig_mod.", ""): v.detach().clone() for k, v in model.state_dict().items()
            }
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                trainer.save_checkpoint(Path(tmp) / "probe.ckpt", weights_only=False)
                self.ckpt_s = time.perf_counter() - t

    return Clock


def _phases(marks: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Per-step phase seconds from consecutive marks (the last mark only closes the interval before it)."""
    out = []
    for m, nxt in itertools.pairwise(marks):
        p = {"total": nxt["start"] - m["start"], "cpu": nxt["cpu"] - m["cpu"], "data": m.get("data", 0.0)}
        p["forward"] = m["f1"] - m["f0"]
        p["loss_log"] = m["b0"] - m.get("ready", m["start"]) - p["forward"]  # bare: "ready" = after the fetch
        p["backward"], p["optimizer"] = m["b1"] - m["b0"], m["o1"] - m["o0"]
        p["framework"] = p["total"] - sum(p[k] for k in PHASES[:-1])
        p["loss"] = m.get("loss", float("nan"))
        out.append(p)
    return out


def _bare(cfg: Any, volumes: Any, steps: int, barrier: Any) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """The same module, episodes and optimiser as ``train(cfg)``, stepped by a plain PyTorch loop."""
    import pytorch_lightning as pl

    from fewshot.config import resolve_channels_last, resolve_precision
    from fewshot.models import create_model
    from fewshot.pipeline import prepare_fold
    from fewshot.training.data import EpisodeDataModule
    from fewshot.training.module import FewShotModule

    pl.seed_everything(cfg.train_seed, workers=True, verbose=False)  # as train(): weights, then data
    model = create_model(cfg.model, seed=cfg.seed)
    fold = prepare_fold(cfg.data, volumes, stage="train", progress=False)
    module = FewShotModule(
        model, cfg.optim, cfg.to_dict(), channels_last=resolve_channels_last(cfg.train.channels_last, False)
    )
    loader = EpisodeDataModule.for_experiment(cfg, fold.train, fold.superpixels).train_dataloader()
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    bf16 = resolve_precision(cfg.train.precision, False).startswith("bf16")
    marks: list[dict[str, float]] = []
    module.model.register_forward_pre_hook(lambda *_: marks[-1].__setitem__("f0", time.perf_counter()))
    module.model.register_forward_hook(lambda *_: marks[-1].__setitem__("f1", time.perf_counter()))
    module.train()
    if barrier is not None:
        barrier.wait()
    batches = iter(loader)
    for _ in range(steps):
        m = {"start": time.perf_counter(), "cpu": time.process_time()}
        marks.append(m)
        batch = next(batches)
        m["ready"] = time.perf_counter()
        m["data"] = m["ready"] - m["start"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):  # as Lightning's
            loss, _ = module.losses(batch)
        m["b0"] = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        m["b1"] = m["o0"] = time.perf_counter()
        opt.step()
        sched.step()
        m["o1"], m["loss"] = time.perf_counter(), float(loss.detach())
    marks.append({"start": time.perf_counter(), "cpu": time.process_time()})
    state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    return marks, state


def run_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """One timed run: ``spec`` = recipe, member, runner (lightning/bare), overrides, threads, steps, out, barrier."""
    threads, affinity = torch.get_num_threads(), os.sched_getaffinity(0)
    try:  # run in this process (--lanes 1, or the tests): leave its threads and affinity as they were
        torch.set_num_threads(spec["threads"])
        if spec.get("pin"):  # this lane and its DataLoader workers on one core
            os.sched_setaffinity(0, {spec.get("lane", 0) % (os.cpu_count() or 1)})
        return _run_arm(spec)
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, affinity)


def _run_arm(spec: dict[str, Any]) -> dict[str, Any]:
    from fewshot.config import resolve_precision
    from fewshot.pipeline import load_volumes
    from fewshot.recipes.spec import load_recipe
    from fewshot.training import train

    recipe = load_recipe(spec["recipe"])
    out = Path(spec["out"]) / f"{spec['name']}-{os.getpid()}-{time.monotonic_ns()}"
    over = {"train.steps": spec["steps"], "out_dir": str(out), "train.accelerator": "cpu"}
    cfg = recipe.member_config(spec["member"], {**spec["overrides"], **over})
    volumes = load_volumes(cfg.data)
    load = os.getloadavg()
    quiet = contextlib.redirect_stderr(
        io.StringIO()
    )  # progress lines as in a recipe's log, not a terminal bar
    with quiet:
        if spec["runner"] == "bare":
            marks, state, ckpt_s = (*_bare(cfg, volumes, spec["steps"], spec.get("barrier")), 0.0)
        else:
            clock = _clock()(spec.get("barrier"), spec.get("compile"))
            train(cfg, volumes=volumes, resume=False, callbacks=[clock])
            marks, state, ckpt_s = clock.marks, clock.state, clock.ckpt_s
    phases = _phases(marks)[spec["warmup"] :]
    mean = {k: statistics.fmean(p[k] for p in phases) for k in (*PHASES, "total", "cpu", "loss")}
    return {
        "mean_s": mean, "ckpt_s": ckpt_s, "ckpt_every": cfg.train.ckpt_every, "load": [load, os.getloadavg()],
        "state": state, "precision": resolve_precision(cfg.train.precision, False),
    }  # fmt: skip


def _run(spec: dict[str, Any], lanes: int) -> list[dict[str, Any]]:
    """``spec`` as ``lanes`` processes side by side (each waits for the others before its first step)."""
    if lanes == 1:
        return [run_arm(spec)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, cf.ProcessPoolExecutor(lanes, mp_context=ctx) as pool:
        barrier = manager.Barrier(lanes)
        return list(pool.map(run_arm, [{**spec, "barrier": barrier, "lane": i} for i in range(lanes)]))


def flops_and_episodes(
    recipe: str, member: int, overrides: dict[str, Any], reps: int = 3
) -> dict[str, float]:
    """FLOPs of one forward + backward of a real batch, and CPU ms per batch of episodes (made in this process)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fewshot.config import resolve_precision
    from fewshot.models import create_model
    from fewshot.pipeline import load_volumes, prepare_fold
    from fewshot.recipes.spec import load_recipe
    from fewshot.training.data import EpisodeDataModule
    from fewshot.training.module import FewShotModule

    cfg = load_recipe(recipe).member_config(member, overrides)
    fold = prepare_fold(cfg.data, load_volumes(cfg.data), stage="train", progress=False)
    data = EpisodeDataModule.for_experiment(cfg, fold.train, fold.superpixels)
    from episodes.sampling import collate_episodes

    b = cfg.train.batch_size
    t = time.process_time()
    batches = [collate_episodes([data.dataset[s * b + j] for j in range(b)]) for s in range(reps)]
    episodes_ms = (time.process_time() - t) / reps * 1000
    module = FewShotModule(create_model(cfg.model, seed=cfg.seed), cfg.optim, cfg.to_dict()).train()
    bf16 = resolve_precision(cfg.train.precision, False).startswith("bf16")
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            loss, _ = module.losses(batches[0])
        loss.backward()
    return {
        "flops": float(counter.get_total_flops()),
        "episodes_ms": episodes_ms,
        "dtype": "bf16" if bf16 else "fp32",
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[bool, float]:
    """``(every tensor equal, max |a - b| over the float tensors)``."""
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    diff = max(
        ((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()), default=0.0
    )
    return equal, diff


def _members(recipes: Sequence[str]) -> list[tuple[str, int, str, int]]:
    """``(recipe, member index, config name, threads)`` for every distinct member config of ``recipes``."""
    from fewshot.recipes.spec import load_recipe

    seen, out = set(), []
    for name in recipes:
        recipe = load_recipe(name)
        for i, member in enumerate(recipe.members):
            key = (
                member.config,
                json.dumps({k: v for k, v in member.overrides.items() if k != "seed"}, sort_keys=True),
            )
            if key not in seen:
                seen.add(key)
                out.append((name, i, Path(member.config).stem, recipe.threads_per_member or 1))
    return out


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, body = text.partition(":")
    if not name or not body:
        raise argparse.ArgumentTypeError(f"--variant NAME:KEY=VALUE[,KEY=VALUE], got {text!r}")
    pairs = [item.partition("=") for item in body.split(",")]
    over = {k.strip(): yaml.safe_load(v) for k, _, v in pairs}
    if over.get("compile", "model") not in ("model", "backbone"):
        raise argparse.ArgumentTypeError(f"--variant {name}: compile must be model or backbone, got {over['compile']!r}")
    return name, over


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="mri-cpu,ct-cpu,mri-gpu")
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=8, help="steps run before the timed ones")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repeats of every arm")
    p.add_argument("--lanes", type=int, default=1, help="processes side by side per timing")
    p.add_argument("--variant", type=_variant, action="append", default=[], metavar="NAME:KEY=VALUE,...")
    p.add_argument("--no-bare", action="store_true", help="skip the bare PyTorch loop")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    common = {k.strip(): yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.setdefault("data.cache_dir", str(out / "superpixel-cache"))
    scratch = Path(tempfile.mkdtemp(prefix="runs-", dir=out))
    report: dict[str, Any] = {
        "argv": list(sys.argv[1:] if argv is None else argv), "lanes": args.lanes, "rounds": args.rounds,
        "cpu": _cpu_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": _commit(), "configs": [],
    }  # fmt: skip
    for recipe, member, config, threads in _members([r for r in args.recipes.split(",") if r]):
        warmup, steps = FEW_STEPS.get(config, (args.warmup, args.steps))
        info = flops_and_episodes(recipe, member, dict(common))
        base = {"recipe": recipe, "member": member, "overrides": dict(common), "threads": threads,
                "steps": warmup + steps + 1, "warmup": warmup, "out": str(scratch)}  # fmt: skip
        arms = [{**base, "name": "lightning", "runner": "lightning"}]
        arms += [] if args.no_bare else [{**base, "name": "bare", "runner": "bare"}]
        for name, over in args.variant:
            extra = {k: over.pop(k, v) for k, v in (("threads", threads), ("compile", None), ("pin", False))}
            arms.append(
                {**base, "name": name, "runner": "lightning", **extra, "overrides": {**common, **over}}
            )
        runs: dict[str, list[dict[str, Any]]] = {a["name"]: [] for a in arms}
        for r in range(args.rounds):
            for arm in arms:
                runs[arm["name"]] += _run(arm, args.lanes)
                rate = 1 / runs[arm["name"]][-1]["mean_s"]["total"]
                print(
                    f"{config} round {r} {arm['name']}: {rate:.2f} steps/s, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        peak, formula = cpu_peak(threads, info["dtype"])
        gemm = gemm_rate(threads, torch.bfloat16 if info["dtype"] == "bf16" else torch.float32)
        entry = {
            "config": config, "recipe": recipe, "precision": runs["lightning"][0]["precision"], "threads": threads,
            "gflop_per_step": info["flops"] / 1e9, "episodes_cpu_ms": info["episodes_ms"], "peak_gflops": peak / 1e9,
            "peak_formula": formula, "gemm_gflops": gemm / 1e9, "steps_timed": steps, "warmup": warmup,
        }  # fmt: skip
        report["configs"].append({**entry, "arms": _summarise(runs, info["flops"], peak, gemm)})
    shutil.rmtree(scratch, ignore_errors=True)
    (out / "training_cost.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "training_cost.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


def _summarise(
    runs: dict[str, list[dict[str, Any]]], flops: float, peak: float, gemm: float
) -> dict[str, Any]:
    """Per arm: mean ms per phase over rounds and lanes, checkpoint cost per step, rate, ratio to Lightning, MFU,
    and whether its final weights equal Lightning's."""
    base = runs["lightning"]
    base_s = statistics.fmean(r["mean_s"]["total"] for r in base)
    rows = {}
    for name, rs in runs.items():
        mean = {k: statistics.fmean(r["mean_s"][k] for r in rs) for k in rs[0]["mean_s"]}
        ckpt = statistics.fmean(r["ckpt_s"] / r["ckpt_every"] for r in rs) if name != "bare" else 0.0
        total = mean["total"] + ckpt
        equal, diff = _same(base[0]["state"], rs[0]["state"])
        rows[name] = {
            "ms": {k: 1000 * v for k, v in mean.items() if k != "loss"}, "ckpt_ms": 1000 * ckpt, "loss": mean["loss"],
            "steps_per_s": 1 / total, "vs_lightning": base_s / mean["total"], "mfu": flops / total / peak,
            "mfu_of_gemm": flops / total / gemm, "weights_equal_lightning": equal, "max_abs_diff": diff,
            "load": [r["load"][0][0] for r in rs],
        }  # fmt: skip
    for rs in runs.values():
        for r in rs:
            r.pop("state", None)
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    cols = ["data", "forward", "loss+log", "backward", "optimizer", "framework", "ckpt"]
    head = f"| config | run | {' | '.join(cols)} | ms/step | CPU ms | steps/s | vs lightning | MFU | loss | weights | load |"
    lines = [
        f"Training cost, {report['date']}, commit {report['commit']}, {report['cpu']}, torch {report['torch']}; "
        f"{report['lanes']} run(s) side by side, {report['rounds']} round(s); ms per step (mean)",
        "", head, "|---|---|" + "---:|" * (head.count("|") - 5) + "---|---|---|",
    ]  # fmt: skip
    for c in report["configs"]:
        for name, row in c["arms"].items():
            ms = row["ms"]
            phases = " | ".join(f"{ms[k]:.1f}" for k in PHASES) + f" | {row['ckpt_ms']:.2f}"
            same = "equal" if row["weights_equal_lightning"] else f"max diff {row['max_abs_diff']:.1e}"
            lines.append(
                f"| {c['config']} | {name} | {phases} | {ms['total'] + row['ckpt_ms']:.1f} | {ms['cpu']:.1f} | "
                f"{row['steps_per_s']:.2f} | {row['vs_lightning']:.3f} | {100 * row['mfu']:.1f}% | {row['loss']:.4f} | "
                f"{same} | {', '.join(f'{x:.1f}' for x in row['load'])} |"
            )
    lines += ["", "| config | precision | threads | GFLOP/step (fwd+bwd) | episodes, CPU ms/step | peak | measured GEMM |",
              "|---|---|---:|---:|---:|---|---:|"]  # fmt: skip
    for c in report["configs"]:
        lines.append(
            f"| {c['config']} | {c['precision']} | {c['threads']} | {c['gflop_per_step']:.2f} | "
            f"{c['episodes_cpu_ms']:.1f} | {c['peak_gflops']:.0f} GFLOP/s = {c['peak_formula']} | "
            f"{c['gemm_gflops']:.0f} GFLOP/s |"
        )
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    from fewshot.device import cpu_name

    return f"{cpu_name() or platform.processor()}, {os.cpu_count()} CPUs"


def _commit() -> str:
    from fewshot.provenance import git_commit

    return str(git_commit() or "unknown")


if __name__ == "__main__":
    raise SystemExit(main())
