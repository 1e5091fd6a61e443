"""Recipes and trained models as first-class objects.

* :mod:`fewshot.recipes.spec`: a :class:`Recipe` is data (members, inference settings, label groups, what it
  measured), read from one YAML file; the packaged ones are listed by :func:`list_recipes`;
* :mod:`fewshot.recipes.fit`: :func:`fit` trains a recipe on any dataset into one folder;
* :mod:`fewshot.recipes.bundle`: that folder, a :class:`Bundle` with a manifest (members with sha256, inference
  settings, intensity statistics, training subjects, data fingerprint, versions), read by :func:`load_bundle`;
* :mod:`fewshot.recipes.cv`: :func:`cross_validate` fits and scores a recipe fold by fold into a report.
"""

from fewshot.recipes.bundle import Bundle, BundleError, is_bundle, load_bundle
from fewshot.recipes.fit import FitResult, fit
from fewshot.recipes.runs import DataSource, MemberRun, plan_runs
from fewshot.recipes.spec import Inference, Measured, Member, Recipe, list_recipes, load_recipe, recipe_path

__all__ = [
    "Bundle",
    "BundleError",
    "DataSource",
    "FitResult",
    "Inference",
    "Measured",
    "Member",
    "MemberRun",
    "Recipe",
    "fit",
    "is_bundle",
    "list_recipes",
    "load_bundle",
    "load_recipe",
    "plan_runs",
    "recipe_path",
]
