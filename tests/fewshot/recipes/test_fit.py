"""fit -> trained-model folder -> evaluate --model -> segment --model, on the phantom, and the bundle's checks."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from episodes.data.datasets import load_dataset
from episodes.data.volumes import save_nifti
from fewshot.cli import main
from fewshot.config import load_config
from fewshot.configs import config_path
from fewshot.evaluation import run_evaluation
from fewshot.recipes import BundleError, fit, load_bundle, load_recipe
from fewshot.recipes.bundle import MANIFEST
from fewshot.recipes.evaluate import evaluate_bundle

#: A short phantom run: 8 subjects, 12 steps per member, no worker processes.
FAST = {"train.steps": 12, "train.num_workers": 0, "train.progress_bar": False, "train.ckpt_every": 6}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The packaged two-member phantom recipe fitted on fold 0 (in this process, one run after the other)."""
    out = tmp_path_factory.mktemp("fit") / "model"
    result = fit(load_recipe("phantom"), out, fold=0, overrides=FAST, jobs=1)
    assert result.trained == ("seed0", "seed1") and result.bundle is not None
    yield out


def _volumes() -> list[Any]:
    return load_dataset("phantom-ct", None, n_subjects=8, shape=(24, 128, 128))


@pytest.mark.slow
def test_the_manifest_names_members_settings_and_provenance(fitted: Path) -> None:
    manifest = json.loads((fitted / MANIFEST).read_text())
    assert manifest["format"] == "fewshot-model" and manifest["recipe"] == "phantom"
    assert [m["name"] for m in manifest["members"]] == ["seed0", "seed1"]
    assert [m["seed"] for m in manifest["members"]] == [0, 1]
    assert all(len(m["sha256"]) == 64 and m["steps"] == 12 for m in manifest["members"])
    assert manifest["norm_stats"] and manifest["modality"] == "CT" and manifest["fold"] == 0
    assert manifest["inference"]["fg_threshold"] == 0.5
    split = load_bundle(fitted).load().config.data.protocol.split([v.subject for v in _volumes()])
    assert sorted(manifest["train_subjects"]) == sorted(split.train) and len(split.train) == 6
    assert len(manifest["data_fingerprint"]) == 64 and manifest["library_version"]
    assert (fitted / "recipe.yaml").is_file()
    for m in manifest["members"]:  # every member is an ordinary training folder
        run = (fitted / m["checkpoint"]).parent.parent
        assert (run / "config.yaml").is_file() and (run / "train_result.json").is_file()


@pytest.mark.slow
def test_bundle_evaluation_equals_the_ensemble_of_its_checkpoints(fitted: Path, tmp_path: Path) -> None:
    """``evaluate --model`` scores the members as the mean of their foreground probabilities, with the bundle's
    settings: the same digits as ``run_evaluation`` of the two checkpoints."""
    bundle = load_bundle(fitted)
    ckpts = [str(fitted / m.checkpoint) for m in bundle.members]
    direct = run_evaluation(ckpts, threshold=0.5, intensity_prior=0.0, tta="none")
    rc = main(["evaluate", "--model", str(fitted), "--out", str(tmp_path / "ev"), "--overlays", "0"])
    assert rc == 0
    via_cli = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert via_cli["dice"] == pytest.approx(dict(direct.dice), abs=0, rel=0)
    single = run_evaluation(ckpts[0], threshold=0.5)
    assert single.dice != direct.dice  # the ensemble is not its first member


@pytest.mark.slow
def test_rerun_trains_nothing_and_keeps_the_model(fitted: Path) -> None:
    before = (fitted / MANIFEST).read_text()
    result = fit(load_recipe("phantom"), fitted, fold=0, overrides=FAST, jobs=1)
    assert result.trained == ()
    assert [m["sha256"] for m in json.loads(before)["members"]] == [m.sha256 for m in result.bundle.members]


@pytest.mark.slow
def test_more_steps_resume_each_member_from_its_checkpoint(fitted: Path, tmp_path: Path) -> None:
    """An interrupted or extended fit continues from each member's last.ckpt (the run with more steps equals one
    trained to that many steps in one go: the episode and learning rate of step i depend on i only)."""
    copy = tmp_path / "model"
    shutil.copytree(fitted, copy)
    more = {**FAST, "train.steps": 18}
    result = fit(load_recipe("phantom"), copy, fold=0, overrides={**more, "seed": 0}, jobs=1, member=0)
    assert result.trained == ("seed0",) and result.bundle is None
    record = json.loads((copy / "members" / "seed0" / "train_result.json").read_text())
    assert record["steps"] == 18 and record["steps_run"] == 6 and record["resumed_from"]


def test_member_option_trains_one_run_and_writes_no_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    assert main(["fit", "--recipe", "phantom", "--fold", "0", "--out", str(out), "--list-runs"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[:2] for line in listed] == [["0", "seed0"], ["1", "seed1"]]
    with pytest.raises(ValueError, match=r"runs 0\.\.1"):
        fit(load_recipe("phantom"), out, fold=0, overrides=FAST, member=2)
    assert not (out / MANIFEST).exists()


@pytest.mark.slow
def test_an_altered_or_missing_member_is_refused_by_name(fitted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(fitted, copy)
    ckpt = copy / "members" / "seed1" / "checkpoints" / "last.ckpt"
    data = bytearray(ckpt.read_bytes())
    data[-10] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"member seed1 .* has sha256 .* the manifest says"):
        load_bundle(copy)
    ckpt.unlink()
    with pytest.raises(BundleError, match="member seed1 is missing"):
        load_bundle(copy)


@pytest.mark.slow
def test_bundle_refuses_scans_of_another_modality(fitted: Path) -> None:
    mr = load_dataset("phantom-mr", None, n_subjects=8, shape=(24, 128, 128))
    with pytest.raises(BundleError, match="trained on CT scans; these are MR"):
        evaluate_bundle(load_bundle(fitted), volumes=mr)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bad_models_and_recipes_are_one_line_exit_2(fitted: Path, tmp_path: Path) -> None:
    bad_recipe = tmp_path / "r.yaml"
    bad_recipe.write_text("name: x\ndescription: d\nmodality: CT\ndataset: phantom-ct\nmembrs: []\n")
    copy = tmp_path / "model"
    shutil.copytree(fitted, copy)
    (copy / "members" / "seed0" / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    cases = [
        (["fit", "--recipe", "nope", "--out", str(tmp_path / "o")], "unknown recipe 'nope'"),
        (["fit", "--recipe", str(bad_recipe), "--out", str(tmp_path / "o")], "membrs"),
        (["evaluate", "--model", str(copy), "--out", str(tmp_path / "e")], "member seed0"),
        (["evaluate", "--model", str(tmp_path), "--out", str(tmp_path / "e")], "no fewshot-model.json"),
        (["evaluate", "--out", str(tmp_path / "e")], "--model DIR"),
    ]
    for args, message in cases:
        proc = _cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "o").exists()


def _liver_support_and_query(folder: Path) -> tuple[list[str], Path]:
    """Two phantom scans and their liver masks as NIfTI in ``folder``: the ``segment`` options naming the support,
    its mask, the organ and the query, and the query's liver mask."""
    support, query = _volumes()[:2]
    for v in (support, query):
        save_nifti(v.image, v, folder / f"{v.subject}.nii.gz")
        assert v.label is not None
        save_nifti((v.label == v.label_map.value("liver")).astype(np.uint8), v, folder / f"{v.subject}_liver.nii.gz")
    options = ["--support", str(folder / f"{support.subject}.nii.gz"), "--support-mask",
               str(folder / f"{support.subject}_liver.nii.gz"), "--organ", "liver",
               "--query", str(folder / f"{query.subject}.nii.gz")]
    return options, folder / f"{query.subject}_liver.nii.gz"


@pytest.mark.slow
def test_segment_with_the_model_equals_segment_with_its_checkpoints(fitted: Path, tmp_path: Path) -> None:
    common, query_liver = _liver_support_and_query(tmp_path)
    bundle = load_bundle(fitted)
    ckpts = [str(fitted / m.checkpoint) for m in bundle.members]
    assert main(["segment", "--model", str(fitted), *common, "--out", str(tmp_path / "a.nii.gz")]) == 0
    assert main(["segment", "--checkpoint", *ckpts, *common, "--fg-threshold", "0.5",
                 "--out", str(tmp_path / "b.nii.gz")]) == 0
    a = np.asarray(nib.load(str(tmp_path / "a.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b.nii.gz")).dataobj)
    assert a.any() and np.array_equal(a, b)
    truth = np.asarray(nib.load(str(query_liver)).dataobj) > 0
    overlap = (a > 0) & truth
    assert overlap.sum() > 0  # the prediction lands on the query's liver, not elsewhere


@pytest.mark.slow
def test_segment_postprocess_keeps_the_largest_component_and_follows_the_model(
    fitted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--postprocess lcc`` writes only the largest 3D component of the prediction; a model folder whose inference
    settings say ``lcc`` gets it without the flag, and ``--postprocess none`` turns it off again. The network's
    prediction is replaced by two blobs (a briefly trained phantom model predicts one), the rest is the real path:
    the query's grid, the NIfTI written back in the file's orientation."""
    import fewshot.segment
    from fewshot.evaluation.postprocess import largest_connected_component

    def two_blobs(model: Any, support: Any, mask: Any, query: Any, **kwargs: Any) -> np.ndarray:
        pred = np.zeros(query.shape, dtype=bool)
        pred[2:10, 20:60, 20:60] = True  # the larger
        pred[14:18, 80:90, 80:90] = True  # apart from it in every direction
        return pred

    monkeypatch.setattr(fewshot.segment, "segment_volume", two_blobs)
    common, _ = _liver_support_and_query(tmp_path)
    lcc_model = tmp_path / "lcc-model"
    shutil.copytree(fitted, lcc_model)
    manifest = json.loads((lcc_model / MANIFEST).read_text())
    manifest["inference"]["postprocess"] = "lcc"
    (lcc_model / MANIFEST).write_text(json.dumps(manifest))

    def segment(model: Path, name: str, *extra: str) -> np.ndarray:
        assert main(["segment", "--model", str(model), *common, "--out", str(tmp_path / name), *extra]) == 0
        return np.asarray(nib.load(str(tmp_path / name)).dataobj) > 0

    plain = segment(fitted, "plain.nii.gz")
    assert plain.sum() == 8 * 40 * 40 + 4 * 10 * 10  # the phantom's query is on the model's grid
    lcc = segment(fitted, "lcc.nii.gz", "--postprocess", "lcc")
    assert lcc.sum() == 8 * 40 * 40 and np.array_equal(lcc, largest_connected_component(plain))
    assert np.array_equal(segment(lcc_model, "default.nii.gz"), lcc)
    assert np.array_equal(segment(lcc_model, "off.nii.gz", "--postprocess", "none"), plain)


def test_setting2_fits_one_model_per_label_group_and_scores_every_organ(tmp_path: Path) -> None:
    """Setting 2 without the trap: one model per label group (each trained without its group's slices), scored
    group by group and joined; a Genesis member pretrains on the training scans first (the other member does not)."""
    recipe = tmp_path / "two.yaml"
    recipe.write_text(
        "name: two\ndescription: d\nmodality: CT\ndataset: phantom-ct\nthreads_per_member: 1\n"
        "members:\n  - {name: a, config: demo_phantom, genesis_steps: 3, genesis_bf16: true}\n"
        "  - {name: b, config: demo_phantom, overrides: {seed: 1}}\n"
    )
    out = tmp_path / "model"
    fast = {**FAST, "train.steps": 6, "data.protocol.organs": ["liver", "left_kidney"]}
    assert main(["fit", "--recipe", str(recipe), "--fold", "0", "--setting", "2", "--out", str(out),
                 *[x for k, v in fast.items() for x in ("--set", f"{k}={json.dumps(v)}")]]) == 0
    bundle = load_bundle(out)
    assert bundle.groups == (("left_kidney",), ("liver",))
    assert sorted(m.name for m in bundle.members) == ["a_left_kidney", "a_liver", "b_left_kidney", "b_liver"]
    whole_group = {"liver": {"liver", "spleen"}, "left_kidney": {"right_kidney", "left_kidney"}}
    for group in bundle.groups:  # each group's models never saw a slice of any organ of the group
        assert set(bundle.load(group).config.data.train_exclusions()) == whole_group[group[0]]
    genesis = {m.name: m.genesis_steps for m in bundle.members}
    assert genesis == {"a_left_kidney": 3, "a_liver": 3, "b_left_kidney": 0, "b_liver": 0}
    assert (out / "members" / "a_liver" / "genesis.pt").is_file() and not (out / "members" / "b_liver" / "genesis.pt").exists()
    meta = torch.load(out / "members" / "a_liver" / "genesis.pt", map_location="cpu", weights_only=False)["meta"]
    assert meta["bf16"] is True and meta["steps"] == 3  # the member's genesis_bf16 reached the pretraining
    from episodes.data.preprocess import unit_slices
    from fewshot.genesis import slices_sha256
    from fewshot.pipeline import load_volumes, split_volumes

    for group in bundle.groups:  # and each group's Genesis pretraining never saw those slices either
        cfg = bundle.load(group).config
        _, train, _ = split_volumes(cfg.data.protocol, load_volumes(cfg.data))
        meta = torch.load(out / "members" / f"a_{group[0]}" / "genesis.pt", weights_only=True)["meta"]
        kept = unit_slices(train, cfg.data.size, exclude_organs=tuple(whole_group[group[0]]))
        sha = meta["data_sha256"]
        assert sha == slices_sha256(kept) and meta["num_slices"] == len(kept)
        assert sha != slices_sha256(unit_slices(train, cfg.data.size))
    assert bundle.load(("liver",)).payload["init_report"] is not None
    result = evaluate_bundle(bundle, out=tmp_path / "ev")
    assert set(result.dice) == {"liver", "left_kidney", "mean"}
    assert result.dice["mean"] == pytest.approx((result.dice["liver"] + result.dice["left_kidney"]) / 2)
    parts = json.loads((tmp_path / "ev" / "liver" / "results.json").read_text())
    assert parts["dice"]["liver"] == result.dice["liver"]  # the liver scored by the liver group's models
    assert (tmp_path / "ev" / "results.md").is_file()


def test_an_interrupted_fit_resumes_when_run_again(tmp_path: Path) -> None:
    """Ctrl-C during ``fewshot fit``: exit 130, no manifest (nothing half-written that a rerun would trust), the
    member's last.ckpt kept; the same command then resumes that member and assembles the model."""
    import os
    import signal
    import time

    out = tmp_path / "model"
    args = [sys.executable, "-m", "fewshot", "fit", "--recipe", "phantom", "--fold", "0", "--jobs", "1", "--out",
            str(out), "--steps", "40", "--set", "train.num_workers=0", "--set", "train.ckpt_every=5",
            "--set", "train.progress_bar=false"]
    # Ctrl-C's default action in the child even when the tests run as a background job (which ignores SIGINT)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = out / "members" / "seed0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ckpt.is_file(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not (out / MANIFEST).exists() and ckpt.is_file()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "members" / "seed0" / "train_result.json").read_text())
    assert record["resumed_from"] and record["steps"] == 40 and record["steps_run"] < 40
    assert [m.steps for m in load_bundle(out).members] == [40, 40]


def test_genesis_weights_pretrained_otherwise_are_not_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A fold's ``genesis.pt`` is reused only when its metadata show the run's settings and training slices: the
    same call returns it untouched, while other steps, ``bf16``, seed or scans raise an error naming what differs
    (the file used to be reused whatever it was pretrained with)."""
    from episodes.data.preprocess import unit_slices
    from fewshot.pipeline import load_volumes, split_volumes
    from fewshot.study import fold_genesis_weights

    cfg = load_config(config_path("demo_phantom"), {**FAST, "data.loader_args": {"n_subjects": 6, "shape": [12, 48, 48]}, "data.size": 32})
    vols = load_volumes(cfg.data)
    out = tmp_path / "genesis.pt"
    with caplog.at_level(logging.INFO, logger="fewshot"):
        path, result = fold_genesis_weights(cfg, vols, 2, out)
    assert path == str(out) and result is not None and len(result.losses) == 2
    n_train = len(split_volumes(cfg.data.protocol, vols)[1])
    n_slices = torch.load(out, weights_only=True)["meta"]["num_slices"]
    assert n_slices == len(unit_slices(split_volumes(cfg.data.protocol, vols)[1], 32)) > 0
    assert f"genesis pretraining data: {n_slices} slices of {n_train} training scans" in caplog.messages
    no_liver = load_config(config_path("demo_phantom"), {**FAST, "data.loader_args": dict(cfg.data.loader_args),
                                                         "data.size": 32, "data.exclude_organs": ["liver"]})
    with caplog.at_level(logging.INFO, logger="fewshot"):
        fold_genesis_weights(no_liver, vols, 2, tmp_path / "no_liver.pt", objective="mim")
    n_kept = torch.load(tmp_path / "no_liver.pt", weights_only=True)["meta"]["num_slices"]
    assert 0 < n_kept < n_slices
    assert (f"mim pretraining data: {n_kept} slices of {n_train} training scans (without every slice holding liver)"
            in caplog.messages)
    before = out.read_bytes()
    assert fold_genesis_weights(cfg, vols, 2, out) == (str(out), None) and out.read_bytes() == before
    for steps, bf16, over, needle in (
        (3, False, {}, "steps 2 (this run: 3)"),
        (2, True, {}, "bf16 False (this run: True)"),
        (2, False, {"seed": 7}, f"seed {cfg.train_seed} (this run: {cfg.train_seed + 7})"),
    ):
        other = load_config(config_path("demo_phantom"), {**FAST, "data.loader_args": dict(cfg.data.loader_args), "data.size": 32, **over})
        with pytest.raises(ValueError, match=re.escape(needle)) as err:
            fold_genesis_weights(other, vols, steps, out, bf16=bf16)
        assert "Delete the file" in str(err.value)
    with pytest.raises(ValueError, match="other training slices"):
        fold_genesis_weights(cfg, [v.with_arrays(v.image * 0.5, v.label) for v in vols], 2, out)
    assert out.read_bytes() == before


def test_a_mim_member_pretrains_by_masked_image_modelling_and_trains_from_it(tmp_path: Path) -> None:
    """``pretrain_objective: mim``: the member's encoder is pretrained by masked image modelling into ``mim.pt`` and
    trained from it (``init: mim``)."""
    recipe = tmp_path / "mim.yaml"
    recipe.write_text(
        "name: mim\ndescription: d\nmodality: CT\ndataset: phantom-ct\nthreads_per_member: 1\n"
        "members:\n  - {name: a, config: demo_phantom, genesis_steps: 2, pretrain_objective: mim}\n"
    )
    out = tmp_path / "model"
    args = ["fit", "--recipe", str(recipe), "--fold", "0", "--out", str(out),
            *[x for k, v in {**FAST, "train.steps": 4}.items() for x in ("--set", f"{k}={json.dumps(v)}")]]
    assert main(args) == 0
    member = out / "members" / "a"
    meta = torch.load(member / "mim.pt", map_location="cpu", weights_only=True)["meta"]
    assert (meta["objective"], meta["steps"]) == ("mim", 2) and not (member / "genesis.pt").exists()
    bundle = load_bundle(out)
    assert [(m.genesis_steps, m.pretrain_objective) for m in bundle.members] == [(2, "mim")]
    payload = bundle.load(None).payload
    assert payload["config"]["model"]["init"]["scheme"] == "mim" and payload["init_report"]["randomized"] == []
