"""End-to-end self-supervised training (:func:`train`).

``train(cfg)``:

1. :func:`fewshot.pipeline.prepare_fold` (``stage="train"``): the fold's **training** subjects
   only, CT statistics fitted on them (stored in the checkpoint, so evaluation normalises the
   test scans with the training statistics), superpixels at ``cfg.data.size`` (cached on disk);
2. :class:`~fewshot.training.data.EpisodeDataModule` + :class:`~fewshot.training.module.FewShotModule`
   and a Lightning ``Trainer`` (GPU when present, AMP and channels-last on CUDA,
   ``devices``/``num_nodes``/``strategy`` passed through, ``last.ckpt`` every
   ``ckpt_every`` steps and at the end, CSV logs);
3. resume from ``<out_dir>/checkpoints/last.ckpt`` when it exists (same global step,
   learning-rate schedule and episode stream as an uninterrupted run).

One run per ``out_dir`` at a time (:mod:`fewshot.training.lock`); checkpoints are written atomically
(:mod:`fewshot.training.checkpoint_io`), so a run killed while saving keeps the previous ``last.ckpt``.

Files under ``out_dir``: ``config.yaml`` (resolved config), ``checkpoints/last.ckpt``,
``logs/version_<n>/metrics.csv``, ``train_result.json``, ``.train.lock``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from episodes.atomic import atomic_write_json, remove_stale_temps
from episodes.data.volumes import Volume
from episodes.processes import Terminated
from fewshot.checkpoint import CHECKPOINT_KEY, checkpoint_path, load_checkpoint, snapshot_path
from fewshot.config import ExperimentConfig, resolve_channels_last, resolve_precision, save_config, to_dict
from fewshot.device import check_accelerator, cpu_bf16_native, cuda_requested
from fewshot.models import create_model
from fewshot.outputs import check_writable_folder, mark_output_dir
from fewshot.pipeline import prepare_fold
from fewshot.provenance import environment, git_commit
from fewshot.training.checkpoint_io import AtomicCheckpointIO
from fewshot.training.data import EpisodeDataModule
from fewshot.training.lock import train_lock
from fewshot.training.module import FewShotModule
from fewshot.training.progress import training_progress

__all__ = ["TrainResult", "train"]

logger = logging.getLogger("fewshot")

#: Lightning warns about mid-epoch resumes with loaders it cannot restore; ours is restored
#: from the global step (see :mod:`fewshot.training.data`), so the warning does not apply.
_RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        checkpoint: ``last.ckpt`` path (``None`` after ``fast_dev_run``, which saves nothing).
        steps: global step reached; ``steps_run`` of them ran in this call.
        seconds: wall time of ``Trainer.fit``; ``steps_per_s = steps_run / seconds``.
        losses: last logged ``loss``, ``ce``, ``align``, ``fg_dice`` (and ``aux``, for a head with its own loss).
        log_dir: CSV log folder; ``out_dir``: experiment folder; ``resumed_from``: checkpoint
            training continued from, if any.
    """

    checkpoint: str | None
    steps: int
    steps_run: int
    seconds: float
    steps_per_s: float
    losses: dict[str, float]
    log_dir: str | None
    out_dir: str
    resumed_from: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -------------------------------------------------------------------------------------- trainer


class _Snapshots(Callback):
    """Writes ``checkpoints/step-<N>.ckpt`` every ``every`` steps (``train.keep_every``).

    The decision depends on the global step only, the same on every rank: ``save_checkpoint`` must be
    called by all processes (it ends in a barrier), so no rank may skip it on its own (e.g. because
    another rank's file already exists).
    """

    def __init__(self, out_dir: Path, every: int) -> None:
        self.out_dir, self.every = out_dir, every

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            trainer.save_checkpoint(snapshot_path(self.out_dir, trainer.global_step), weights_only=False)


class _FinalCheckpoint(Callback):
    """Writes ``last.ckpt`` when training ends (also on Ctrl-C in single-process runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.interrupt: KeyboardInterrupt | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            # Lightning's own SIGTERM handler also sees the signal, and its loop raises this (a SystemExit with
            # status 0) at the end of a step when its check comes before _StopOnSignal's: the same stop as ours.
            exception = Terminated()
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt = exception
        if isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1:
            trainer.save_checkpoint(self.path, weights_only=False)
            logger.warning(
                "interrupted at step %d; saved %s (rerun to resume)", trainer.global_step, self.path
            )


class _StopOnSignal(Callback):
    """Ctrl-C (SIGINT) and SIGTERM during ``fit`` stop training at the end of the current step.

    The signal only records the request; :meth:`on_train_batch_end` raises it (``KeyboardInterrupt``, or
    :class:`~episodes.processes.Terminated` for SIGTERM) once the optimiser step is complete, so the
    ``last.ckpt`` saved on the way out holds a whole step (an exception raised mid-step would save
    batch-norm statistics of a step the global step does not count, and the resumed run would differ).
    A second signal interrupts at once.
    """

    def __init__(self) -> None:
        self.pending: KeyboardInterrupt | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.pending is not None:
            raise self.pending
        self.pending = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        logger.warning("%s: stopping after this step (again to stop at once)", signal.Signals(signum).name)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.pending is not None:
            raise self.pending


def train(
    cfg: ExperimentConfig,
    *,
    volumes: Sequence[Volume] | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    fast_dev_run: bool = False,
) -> TrainResult:
    """Self-supervised training of ``cfg.model`` on the fold's training subjects.

    Args:
        cfg: the experiment.
        volumes: raw (un-normalised) volumes of the whole dataset; default: loaded from
            ``cfg.data``. Only the fold's training subjects are used.
        resume: continue from ``<out_dir>/checkpoints/last.ckpt`` if it exists.
        callbacks: extra Lightning callbacks.
        fast_dev_run: one step, no checkpoint or log written (smoke test).

    Raises:
        fewshot.training.lock.OutputInUseError: another ``train`` is running in ``cfg.out_dir``.
    """
    check_one_label_group(cfg)
    out = Path(cfg.out_dir)
    check_accelerator(cfg.train.accelerator)  # before any work: no superpixels computed for a missing GPU
    check_writable_folder(out)
    if not out.exists():
        mark_output_dir(out, "train")  # made by the library: `demo --overwrite` etc. may replace it
    with train_lock(out) as lock:
        if lock is not None:  # no other run writes here: temp files of killed checkpoint writes are stale
            for stale in remove_stale_temps(checkpoint_path(out)):
                logger.info("removed %s, left by a run killed while saving a checkpoint", stale)
        return _train(cfg, volumes, resume, callbacks, fast_dev_run)


def check_one_label_group(cfg: ExperimentConfig) -> None:
    """Refuse a setting-2 run whose tested organs span several label groups without an explicit
    ``data.exclude_organs``: one model would be trained without the slices of every group, which is not the
    protocol (SSL-ALPNet trains one model per group, each without its own group's slices)."""
    protocol = cfg.data.protocol
    if protocol.setting != 2 or cfg.data.exclude_organs is not None:
        return
    runs = protocol.training_runs()
    if len(runs) > 1:
        groups = "; ".join("+".join(tested) for tested, _ in runs)
        first = ",".join(runs[0][0])
        raise ValueError(
            f"setting 2 with organs {', '.join(protocol.organs)} spans {len(runs)} label groups ({groups}): one "
            f"model would never see any of their slices; SSL-ALPNet trains one model per group: use `fewshot fit "
            f"--recipe R --setting 2` (one model per group), or train one group with --organs {first} (to exclude "
            "the union on purpose, set data.exclude_organs)"
        )


def _train(
    cfg: ExperimentConfig,
    volumes: Sequence[Volume] | None,
    resume: bool,
    callbacks: Sequence[Callback],
    fast_dev_run: bool,
) -> TrainResult:
    """:func:`train` under the output folder's lock."""
    out = Path(cfg.out_dir)
    ckpt = checkpoint_path(out)
    resumed = str(ckpt) if resume and ckpt.is_file() and not fast_dev_run else None
    # A refused resume (changed config, fewer steps than done) fails here, before config.yaml is rewritten.
    start_step = _check_resume(ckpt, cfg) if resumed else 0
    if resumed and start_step >= cfg.train.steps:
        logger.warning("%s is at step %d of train.steps=%d: nothing to train", ckpt, start_step, cfg.train.steps)
        return _finished_result(ckpt, start_step, out)
    save_config(cfg, out / "config.yaml")
    on_cuda = cuda_requested(cfg.train.accelerator)
    precision = resolve_precision(cfg.train.precision, on_cuda)
    channels_last = resolve_channels_last(cfg.train.channels_last, on_cuda)
    if precision.startswith("bf16") and not on_cuda and not cpu_bf16_native():
        logger.warning(
            "train.precision=%s on a CPU without hardware bfloat16 (no AVX512-BF16 or AMX): torch emulates it "
            "and training is slower than with train.precision=32-true",
            precision,
        )
    pl.seed_everything(cfg.train_seed, workers=True, verbose=False)
    # The model first: a missing weights file fails before any data is read or superpixel computed.
    model = create_model(cfg.model, seed=cfg.seed)
    fold = prepare_fold(
        cfg.data,
        volumes,
        stage="train",
        cache_dir=cfg.data.cache_dir if cfg.data.cache_dir is not None else out / "cache" / "superpixels",
        progress=cfg.train.progress_bar,
    )
    assert fold.superpixel_stats is not None
    sp_stats = fold.superpixel_stats.to_dict()
    extras = {
        **fold.extras(),
        "superpixel_stats": {k: v for k, v in sp_stats.items() if k != "per_subject_regions"},
        "precision": precision,
        "channels_last": channels_last,
        "environment": environment(),
        "commit": git_commit(),
    }
    module = FewShotModule(model, cfg.optim, to_dict(cfg), extras=extras, channels_last=channels_last)

    csv = CSVLogger(save_dir=str(out), name="logs")
    _ = csv.version  # fix the version now, so every process (and the result) agree on the log folder
    show_bar, progress_callbacks = training_progress(cfg.train.progress_bar)  # lines when not on a terminal
    final = _FinalCheckpoint(ckpt)
    stop = _StopOnSignal()
    trainer = pl.Trainer(
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=precision,  # type: ignore[arg-type]
        max_steps=cfg.train.steps,
        max_epochs=-1,
        logger=csv if not fast_dev_run else False,
        callbacks=[
            ModelCheckpoint(
                dirpath=ckpt.parent, save_top_k=0, save_last=True, every_n_train_steps=cfg.train.ckpt_every,
                enable_version_counter=False,  # last.ckpt is replaced, never joined by a last-v1.ckpt
            ),
            *([] if fast_dev_run else [final]),
            stop,
            *([_Snapshots(out, cfg.train.keep_every)] if cfg.train.keep_every and not fast_dev_run else []),
            *progress_callbacks,
            *callbacks,
        ],
        log_every_n_steps=cfg.train.log_every,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        deterministic=cfg.train.deterministic,
        default_root_dir=str(out),
        fast_dev_run=fast_dev_run,
        plugins=[AtomicCheckpointIO()],
    )
    datamodule = EpisodeDataModule.for_experiment(cfg, fold.train, fold.superpixels, world_size=trainer.world_size)
    module.extras["episodes"] = datamodule.describe()
    if resumed:
        logger.info("resuming from %s (step %d)", ckpt, start_step)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RESUME_WARNING)
        warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`")
        try:
            with stop.installed():
                trainer.fit(module, datamodule=datamodule, ckpt_path=resumed, weights_only=True)
        except SystemExit:  # Lightning turns Ctrl-C into sys.exit(1); the CLI reports it as 130 (SIGTERM: 143)
            if final.interrupt is not None:
                raise final.interrupt from None
            raise
    seconds = time.perf_counter() - t0
    if fast_dev_run:
        steps = 1
    else:
        steps = _read_global_step(ckpt)  # valid in the main process for every strategy (ddp_spawn too)
    steps_run = steps - start_step
    losses = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k in ("loss", "ce", "align", "aux", "fg_dice")
    }
    result = TrainResult(
        checkpoint=None if fast_dev_run else str(ckpt),
        steps=steps,
        steps_run=steps_run,
        seconds=seconds,
        steps_per_s=steps_run / seconds if seconds > 0 else 0.0,
        losses=losses,
        log_dir=None if fast_dev_run else csv.log_dir,
        out_dir=str(out),
        resumed_from=resumed,
    )
    if not fast_dev_run and trainer.global_rank == 0 and (steps_run > 0 or not (out / "train_result.json").is_file()):
        # a resumed call that trained nothing (already at train.steps) keeps the record of the run that did
        atomic_write_json(out / "train_result.json", result.to_dict())
    return result


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.head.name": "alpnet", ...}``: the dotted keys and values of a nested dict."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


_ABSENT = object()


def config_differences(stored: dict[str, Any], current: dict[str, Any], sections: Sequence[str]) -> list[str]:
    """``["model.head.name: 'alpnet' -> 'panet'", ...]``: the leaves of ``sections`` that differ (a key only one
    side has shows as ``(absent)`` on the other); ``name`` keys first, so the cause leads."""
    old = _leaves({k: stored.get(k) for k in sections})
    new = _leaves({k: current.get(k) for k in sections})

    def shown(value: Any) -> str:
        return "(absent)" if value is _ABSENT else repr(value)

    return [
        f"{key}: {shown(old.get(key, _ABSENT))} -> {shown(new.get(key, _ABSENT))}"
        for key in sorted(set(old) | set(new), key=lambda k: (not k.endswith(".name"), k))
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]


def _check_resume(path: Path, cfg: ExperimentConfig) -> int:
    """Global step of ``path``; raises if its data/model/optim settings or seed differ from ``cfg``, or if it
    is past ``cfg.train.steps``."""
    from fewshot.config import load_config

    ckpt = load_checkpoint(path)
    stored = to_dict(load_config((ckpt.get(CHECKPOINT_KEY) or {}).get("config") or {}))
    current = to_dict(cfg)
    for tree in (stored, current):  # where the superpixel cache lives is not how the model trains (a moved run resumes)
        tree["data"].pop("cache_dir", None)
    diffs = config_differences(stored, current, ("data", "model", "optim", "seed"))
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise ValueError(
            f"cannot resume from {path}: the config changed ({shown}); use a new output "
            "folder (--out) or start over (`fewshot train --no-resume`)"
        )
    step = int(ckpt.get("global_step", 0))
    if step > cfg.train.steps:
        raise ValueError(
            f"cannot resume from {path}: it is at step {step}, past train.steps={cfg.train.steps}; pass --steps "
            f"{step} or more to continue it, or use a new output folder (--out)"
        )
    return step


def _finished_result(ckpt: Path, steps: int, out: Path) -> TrainResult:
    """The result of a resumed call that had nothing to train (the run is already at ``train.steps``)."""
    return TrainResult(
        checkpoint=str(ckpt), steps=steps, steps_run=0, seconds=0.0, steps_per_s=0.0, losses={},
        log_dir=None, out_dir=str(out), resumed_from=str(ckpt),
    )


def _read_global_step(path: Path) -> int:
    return int(load_checkpoint(path).get("global_step", 0))
