"""A recipe is data: its members, its inference settings and what it measured, read from one YAML file.

A :class:`Recipe` names one or more **members** (each a packaged config or YAML file, dotted overrides, and
optionally Models Genesis pretraining steps on the training scans first), the **inference settings** its
members are scored with as one ensemble (threshold, veto, fine-tuning, TTA, post-processing, shot fusion),
the **label groups** setting 2 trains one model for each, and the numbers it **measured** (5-fold Dice, time
per fold and the hardware). ``fewshot fit --recipe NAME`` trains it on any dataset the loaders read
(:func:`fewshot.recipes.fit`), ``fewshot cv`` cross-validates it and ``fewshot recipes`` lists them.

Packaged recipes live beside this module (``fewshot/recipes/<name>.yaml``); any YAML path works too. Every key
is checked: a misspelled one is refused with the valid keys, and every member's config is loaded with its
overrides when the recipe is read, so a bad member fails before anything trains.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from episodes.protocol import Protocol
from episodes.protocol.folds import SETTING2_GROUPS
from fewshot.config import ConfigError, ExperimentConfig, load_config
from fewshot.config.model import FinetuneConfig, check_intensity_prior, check_threshold
from fewshot.config.schema import config_from_dict, plain, read_yaml

__all__ = [
    "RECIPE_DIR",
    "Inference",
    "Measured",
    "Member",
    "Recipe",
    "list_recipes",
    "load_recipe",
    "recipe_path",
]

RECIPE_DIR = Path(__file__).resolve().parent / "packaged"


@dataclass(frozen=True)
class Member:
    """One model of a recipe.

    Attributes:
        config: a packaged config name (``mri_cbr_small``) or a YAML path (relative paths are read from the
            recipe file's folder).
        overrides: dotted config keys, as ``--set`` takes them (``{"seed": 1, "train.num_workers": 1}``).
        genesis_steps: Models Genesis restoration steps on the training scans before training (0: none); the
            encoder is pretrained as the member cuts it, and trained from those weights (``init: genesis``).
        pretrain_objective: what those steps train: ``"genesis"`` (Models Genesis restoration, the default) or
            ``"mim"`` (masked image modelling, SimMIM-style; ``init: mim``), :func:`fewshot.genesis.pretrain_genesis`.
        genesis_bf16: run those steps under bfloat16 autocast (1.4-1.6x faster on a CPU with hardware bf16,
            docs/performance.md; other weights than float32's). Default float32.
        name: the member's folder name in a trained model (default ``member<i>``).
    """

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    genesis_steps: int = 0
    genesis_bf16: bool = False
    pretrain_objective: str = "genesis"
    name: str = ""

    def __post_init__(self) -> None:
        from fewshot.genesis import OBJECTIVES

        if self.genesis_steps < 0:
            raise ConfigError(f"members[].genesis_steps must be >= 0, got {self.genesis_steps}")
        if self.pretrain_objective not in OBJECTIVES:
            raise ConfigError(
                f"members[].pretrain_objective must be one of {', '.join(OBJECTIVES)}, got {self.pretrain_objective!r}"
            )
        if self.name and (not self.name.replace("-", "").replace("_", "").isalnum()):
            raise ConfigError(f"members[].name {self.name!r}: use letters, digits, '-' and '_' only")


@dataclass(frozen=True)
class Inference:
    """How the members are scored as one model (the mean of their foreground probabilities).

    Attributes:
        fg_threshold: foreground where the ensemble's probability exceeds it (``model.fg_threshold``).
        tta: ``none`` or ``flip`` (``model.tta``).
        intensity_prior: weight of the support-intensity veto, for calibrated CT (``model.intensity_prior``).
        finetune: test-time fine-tuning of each member on the support slice (``model.finetune``; steps 0: off).
        postprocess: the headline scores' post-processing (``none`` or ``lcc``; the other is reported beside).
        shot_fusion: how k > 1 support slices are combined (``prototypes`` or ``scores``; ``model.head.shot_fusion``).
    """

    fg_threshold: float = 0.5
    tta: Literal["none", "flip"] = "none"
    intensity_prior: float = 0.0
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    postprocess: Literal["none", "lcc"] = "none"
    shot_fusion: Literal["prototypes", "scores"] = "prototypes"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fg_threshold", check_threshold(self.fg_threshold, "inference.fg_threshold"))
        object.__setattr__(
            self, "intensity_prior", check_intensity_prior(self.intensity_prior, "inference.intensity_prior")
        )

    def model_overrides(self) -> dict[str, Any]:
        """The dotted config keys that store these settings in each member's config."""
        over: dict[str, Any] = {
            "model.fg_threshold": self.fg_threshold,
            "model.tta": self.tta,
            "model.intensity_prior": self.intensity_prior,
            "model.head.shot_fusion": self.shot_fusion,
        }
        over.update({f"model.finetune.{k}": v for k, v in plain(self.finetune).items()})
        return over

    def loader_settings(self) -> dict[str, Any]:
        """The settings :func:`fewshot.checkpoint.load_model_from_checkpoints` replaces in every member."""
        return {"fg_threshold": self.fg_threshold, "tta": self.tta, "intensity_prior": self.intensity_prior}

    def to_dict(self) -> dict[str, Any]:
        return dict(plain(self))


@dataclass(frozen=True)
class Measured:
    """What the recipe measured on one dataset and setting (Dice in %, scored as ``fewshot cv`` scores).

    ``folds`` holds each fold's mean Dice, fold 0 first, in fold order; fold 0 chose the recipe's settings, so
    :attr:`unchosen_mean` (folds 1-4, or those of them measured so far) is the number no choice saw.
    """

    dataset: str
    setting: int
    folds: tuple[float, ...]
    minutes_per_fold: float
    hardware: str
    results: str = ""
    commit: str = ""
    shots: int = 1
    note: str = ""

    def __post_init__(self) -> None:
        if not self.folds:
            raise ConfigError("measured[].folds must list at least one fold's mean Dice")

    @property
    def mean(self) -> float:
        return statistics.fmean(self.folds)

    @property
    def unchosen_mean(self) -> float | None:
        """Mean over the folds after fold 0 (1-4 once all five are measured; ``None`` when only fold 0 is)."""
        return statistics.fmean(self.folds[1:]) if len(self.folds) > 1 else None


@dataclass(frozen=True)
class Recipe:
    """A recipe (see the module docstring). ``source`` is the file it was read from."""

    name: str
    description: str
    modality: Literal["CT", "MR"]
    dataset: str
    members: tuple[Member, ...]
    inference: Inference = field(default_factory=Inference)
    threads_per_member: int | None = None
    label_groups: tuple[tuple[str, ...], ...] = SETTING2_GROUPS
    differences: str = ""
    measured: tuple[Measured, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if not self.members:
            raise ConfigError(f"recipe {self.name!r} has no members")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ConfigError(f"recipe {self.name!r}: member names repeat: {names}")
        if self.threads_per_member is not None and self.threads_per_member < 1:
            raise ConfigError(f"threads_per_member must be >= 1, got {self.threads_per_member}")
        seen: set[str] = set()
        for group in self.label_groups:
            if not group or seen & set(group):
                raise ConfigError(f"label_groups must be non-empty and disjoint, got {self.label_groups}")
            seen |= set(group)

    # ---- members

    def member_config(self, index: int, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
        """Member ``index``'s config: its file, its overrides, the recipe's inference settings, then ``overrides``."""
        m = self.members[index]
        return load_config(
            member_config_path(m.config, self.source),
            {**m.overrides, **self.inference.model_overrides(), **(overrides or {})},
        )

    def group_of(self, organ: str) -> tuple[str, ...]:
        """The label group holding ``organ``."""
        for group in self.label_groups:
            if organ in group:
                return group
        raise ValueError(f"organ {organ!r} is in no label group of recipe {self.name}: {self.label_groups}")

    def groups_for(self, organs: tuple[str, ...], setting: int) -> list[tuple[str, ...]]:
        """The organ groups that each need a model: all ``organs`` in setting 1; in setting 2 one per label group
        (SSL-ALPNet: a model trained without a group's slices is tested on that group's organs)."""
        protocol = Protocol(organs=organs, setting=setting)
        return [tested for tested, _ in protocol.training_runs(self.label_groups)]

    def to_dict(self) -> dict[str, Any]:
        d = dict(plain(self))
        d.pop("source", None)
        return d


def member_config_path(config: str, recipe_source: str = "") -> Path:
    """A member's config file: a packaged config name, or a YAML path (relative to the recipe's folder)."""
    from fewshot.configs import config_path

    path = Path(config)
    if path.suffix in (".yaml", ".yml") and not path.is_absolute() and recipe_source:
        beside = Path(recipe_source).parent / path
        if beside.is_file():
            return beside
    return config_path(config)


def list_recipes() -> list[str]:
    """The packaged recipes' names."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name: str | os.PathLike[str]) -> Path:
    """A packaged recipe by name, or a recipe YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        raise FileNotFoundError(f"recipe file {path} not found")
    packaged = RECIPE_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    raise FileNotFoundError(f"unknown recipe {str(name)!r}; packaged recipes: {', '.join(list_recipes())} "
                            "(or give a recipe .yaml file)")


def recipe_from_dict(data: Mapping[str, Any], source: str = "") -> Recipe:
    """Build and check a :class:`Recipe` (every member's config is loaded with its overrides)."""
    tree = dict(data)
    members = tree.get("members")
    if isinstance(members, list):  # default names before the strict conversion
        tree["members"] = [
            {**m, "name": m.get("name") or f"member{i}"} if isinstance(m, Mapping) else m for i, m in enumerate(members)
        ]
    where = f"recipe {source}" if source else "recipe"
    try:
        recipe: Recipe = config_from_dict(Recipe, {**tree, "source": source}, prefix="")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    for i, m in enumerate(recipe.members):
        try:
            cfg = recipe.member_config(i)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{where}: member {m.name} ({m.config}): {e}") from None
        if m.genesis_steps and cfg.model.init.scheme not in ("random", m.pretrain_objective):
            raise ConfigError(f"{where}: member {m.name} has genesis_steps and init {cfg.model.init.scheme!r}; "
                              "the pretraining replaces the init: give one or the other")
    return recipe


def load_recipe(name: str | os.PathLike[str] | Mapping[str, Any]) -> Recipe:
    """A packaged recipe by name (``mri-cpu``), a recipe YAML file, or a mapping."""
    if isinstance(name, Mapping):
        return recipe_from_dict(name)
    path = recipe_path(name)
    return recipe_from_dict(read_yaml(path), source=str(path))

