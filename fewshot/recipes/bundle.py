"""A trained model is one folder: a recipe's member checkpoints and a manifest that says how to use them.

Layout (written by :func:`fewshot.recipes.fit`)::

    MODEL_DIR/
      fewshot-model.json        the manifest (below), written last and atomically
      recipe.yaml               the recipe as trained (members, inference settings, what it measured)
      members/<run>/            one ordinary training folder per member (and per label group in setting 2):
                                config.yaml, checkpoints/last.ckpt, genesis.pt when pretrained, logs/
      cache/superpixels/        the pseudo-labels the members shared
      logs/                     one log per run when trained side by side

The manifest (``format: fewshot-model``, ``format_version: 1``) holds: the recipe's name and inference settings;
the dataset, modality, setting and fold; the label groups and, per group, its member runs (relative checkpoint
path, **sha256**, steps, seed, Models Genesis steps, training time); the CT intensity statistics the members were
trained with; the training subjects and a fingerprint of their images; the library version, the commit and the
environment. :func:`load_bundle` checks it and every member's sha256 before anything is scored, so a missing,
truncated or retrained member is refused by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from episodes.atomic import atomic_write_json, atomic_write_text, read_json
from fewshot.config.schema import ConfigError, config_from_dict
from fewshot.recipes.spec import Inference, Recipe

__all__ = ["BUNDLE_FORMAT", "MANIFEST", "Bundle", "BundleError", "BundleMember", "data_fingerprint",
           "is_bundle", "load_bundle", "write_bundle"]

MANIFEST = "fewshot-model.json"
BUNDLE_FORMAT = "fewshot-model"
FORMAT_VERSION = 1


class BundleError(ValueError):
    """A trained-model folder that cannot be used: no manifest, a bad one, or a missing/altered member."""


@dataclass(frozen=True)
class BundleMember:
    """One member run of a trained model: its checkpoint (relative to the folder) and what trained it."""

    name: str
    organs: tuple[str, ...]
    checkpoint: str
    sha256: str
    steps: int
    seed: int
    genesis_steps: int = 0
    train_seconds: float = 0.0
    genesis_seconds: float = 0.0
    pretrain_objective: str = "genesis"


@dataclass(frozen=True)
class Bundle:
    """A trained model folder (see the module docstring); :func:`load_bundle` reads and verifies one."""

    root: Path
    recipe: str
    inference: Inference
    dataset: str
    modality: str
    setting: int
    fold: int | None
    groups: tuple[tuple[str, ...], ...]
    members: tuple[BundleMember, ...]
    manifest: Mapping[str, Any]

    @property
    def organs(self) -> tuple[str, ...]:
        return tuple(o for g in self.groups for o in g)

    def group_of(self, organ: str) -> tuple[str, ...]:
        for group in self.groups:
            if organ in group:
                return group
        raise BundleError(f"{self.root}: this model was trained for {', '.join(self.organs)}, not {organ!r}")

    def run_config(self) -> Any:
        """The training config of the first member run (its ``config.yaml``): the data and protocol it trained on."""
        from fewshot.config import load_config

        return load_config((self.root / self.members[0].checkpoint).parent.parent / "config.yaml")

    def checkpoints(self, group: Sequence[str]) -> list[Path]:
        """The member checkpoints of one label group (all members in setting 1)."""
        return [self.root / m.checkpoint for m in self.members if tuple(m.organs) == tuple(group)]

    def load(
        self,
        group: Sequence[str] | None = None,
        map_location: Any = "cpu",
        inference: Mapping[str, Any] | None = None,
    ) -> Any:
        """The members of ``group`` (default: the only group) as one model
        (:func:`fewshot.checkpoint.load_model_from_checkpoints`) with the bundle's inference settings, those in
        ``inference`` (``None`` values: the bundle's) replacing them."""
        from fewshot.checkpoint import load_model_from_checkpoints

        if group is None:
            if len(self.groups) != 1:
                raise BundleError(f"{self.root} holds one model per label group {list(self.groups)}; name the organ")
            group = self.groups[0]
        return load_model_from_checkpoints(self.checkpoints(group), map_location=map_location,
                                           inference=self.inference_settings(inference))

    def inference_settings(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The bundle's ``fg_threshold``, ``tta`` and ``intensity_prior``, those ``given`` (not ``None``) replacing them."""
        return {**self.inference.loader_settings(), **{k: v for k, v in (given or {}).items() if v is not None}}

    def finetune_settings(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The bundle's ``model.finetune`` fields, those ``given`` (not ``None``) replacing them."""
        return {**dataclasses.asdict(self.inference.finetune), **{k: v for k, v in (given or {}).items() if v is not None}}

    def describe(self) -> str:
        fold = "every scan" if self.fold is None else f"fold {self.fold}"
        return (f"{self.recipe} ({len(self.members)} model(s)), {self.modality} {self.dataset}, setting {self.setting}, "
                f"trained on {fold}")


def is_bundle(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _sha256(path: Path) -> str:
    from fewshot.backbones.inits.files import sha256_file

    return sha256_file(path)


def data_fingerprint(volumes: Sequence[Any]) -> str:
    """sha256 over the subjects, shapes, spacings and image bytes of ``volumes`` (in subject order)."""
    h = hashlib.sha256()
    for v in sorted(volumes, key=lambda v: v.subject):
        image = np.ascontiguousarray(v.image)
        h.update(f"{v.subject}|{image.shape}|{image.dtype}|{tuple(float(s) for s in v.spacing)}|".encode())
        h.update(hashlib.sha256(image.tobytes()).digest())
    return h.hexdigest()


def write_bundle(
    root: Path,
    recipe: Recipe,
    runs: Sequence[Any],
    results: Mapping[str, Mapping[str, Any]],
    *,
    setting: int,
    fold: int | None,
    fingerprint: str | None,
) -> Bundle:
    """Write ``root/fewshot-model.json`` and ``root/recipe.yaml`` for the finished ``runs``
    (:class:`~fewshot.recipes.runs.MemberRun`; ``results[run.name]`` what :func:`~fewshot.recipes.runs.train_run`
    returned). The members are loaded once as one model per group, so members that cannot be one model (other
    folds, data or CT statistics) are refused here, not when the model is used."""
    import yaml

    from fewshot import __version__
    from fewshot.checkpoint import load_model_from_checkpoints
    from fewshot.provenance import environment, git_commit

    groups: list[tuple[str, ...]] = list(dict.fromkeys(tuple(r.organs) for r in runs))
    members = []
    payload: Mapping[str, Any] = {}
    commits: set[str] = set()
    for group in groups:
        group_runs = [r for r in runs if tuple(r.organs) == group]
        loaded = load_model_from_checkpoints([r.checkpoint for r in group_runs],
                                             inference=recipe.inference.loader_settings())
        payload = loaded.payload
        commits |= {str(m.get("commit")) for m in payload.get("ensemble", [payload])}
        for r in group_runs:
            res = results[r.name]
            members.append(BundleMember(
                name=r.name, organs=group, checkpoint=str(r.checkpoint.relative_to(root)), sha256=_sha256(r.checkpoint),
                steps=int(res["steps"]), seed=int(r.config["seed"]), genesis_steps=r.genesis_steps,
                train_seconds=float(res.get("train_wall_seconds", 0.0)),
                genesis_seconds=float(res.get("genesis_seconds", 0.0)), pretrain_objective=r.pretrain_objective,
            ))
    first = runs[0].experiment()
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "recipe": recipe.name,
        "inference": recipe.inference.to_dict(),
        "dataset": first.data.dataset,
        "data_dir": first.data.data_dir,
        "modality": payload.get("modality"),
        "setting": setting,
        "fold": fold,
        "groups": [list(g) for g in groups],
        "members": [dataclasses.asdict(m) | {"organs": list(m.organs)} for m in members],
        "norm_stats": payload.get("norm_stats"),
        "train_subjects": list(payload.get("train_subjects") or []),
        "data_fingerprint": fingerprint,
        "library_version": __version__,
        "commit": git_commit(),
        "trained_with_commits": sorted(commits),  # every group's members
        "environment": environment(),
    }
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    atomic_write_json(root / MANIFEST, manifest)
    return load_bundle(root, verify=False)  # the files were just hashed above


def load_bundle(root: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Read a trained-model folder; ``verify`` checks every member's file and sha256."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"--model {root}: no such folder (a trained model is the folder `fewshot fit --out` wrote)")
    if not path.is_file():
        hint = (" (it looks like one member run: pass its checkpoints/last.ckpt with --checkpoint)"
                if (root / "checkpoints" / "last.ckpt").is_file() else
                " (an unfinished `fewshot fit`? rerun it to finish and write the manifest)")
        raise BundleError(f"--model {root}: no {MANIFEST}{hint}")
    data = read_json(path, "trained-model manifest")
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a fewshot trained-model manifest")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {data.get('format_version')} is newer than this library reads "
                          f"({FORMAT_VERSION}); upgrade fewshot-medseg")
    try:
        inference = config_from_dict(Inference, data["inference"], prefix="inference")
        members = tuple(
            config_from_dict(BundleMember, {**m, "organs": tuple(m["organs"])}, prefix="members[]")
            for m in data["members"]
        )
        bundle = Bundle(
            root=root, recipe=str(data["recipe"]), inference=inference, dataset=str(data["dataset"]),
            modality=str(data["modality"]), setting=int(data["setting"]), fold=data["fold"],
            groups=tuple(tuple(g) for g in data["groups"]), members=members, manifest=data,
        )
    except (KeyError, TypeError, ConfigError) as e:
        raise BundleError(f"{path}: a damaged manifest ({e})") from None
    if verify:
        for m in bundle.members:
            file = root / m.checkpoint
            if not file.is_file():
                raise BundleError(f"--model {root}: member {m.name} is missing ({m.checkpoint}); retrain it with "
                                  "`fewshot fit` (same options) or restore the file")
            digest = _sha256(file)
            if digest != m.sha256:
                raise BundleError(
                    f"--model {root}: member {m.name} ({m.checkpoint}) has sha256 {digest[:12]}..., the manifest says "
                    f"{m.sha256[:12]}...: the file was altered or retrained after the model was assembled; rerun "
                    "`fewshot fit` to assemble it again, or restore the file"
                )
    return bundle
